"""Host tests: run only against a real ComfyUI tree named by COMFYUI_PATH, with the host's venv python:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python -m pytest tests/host

Without it every test here is skipped with the reason shown (pytest -ra). Weights are generated
once (full-size SD1.5 shapes, random values) and cached in CONTROLNET_PACK_WEIGHTS_CACHE
(default: <tmp>/controlnet-pack-host-weights).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import host_env  # noqa: E402

HERE = Path(__file__).parent


def _skip_reason() -> str | None:
    path = host_env.comfyui_path()
    if path is None:
        return "host test: set COMFYUI_PATH to a ComfyUI tree and run with the host's venv python"
    if not (path / "main.py").exists():
        return f"host test: COMFYUI_PATH={path} has no main.py"
    for module in ("torchvision", "aiohttp", "safetensors"):
        if importlib.util.find_spec(module) is None:
            return (f"host test: this python ({sys.executable}) lacks {module!r}; run with the host's venv python, "
                    f"which has ComfyUI's requirements installed")
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    path = host_env.comfyui_path()
    host_env.import_comfy(path)
    return path


@pytest.fixture(scope="session")
def host_weights(comfy_path) -> dict[str, Path]:
    import weights

    return weights.ensure_weights(host_env.WEIGHTS_CACHE)


@pytest.fixture(scope="session")
def example_images() -> dict:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pose = np.zeros((256, 256, 3), np.uint8)
    pose[64:192:8, 96:160] = (255, 0, 85)  # a few coloured limbs on black, as an OpenPose map looks
    pose[100:110, 40:216] = (0, 255, 170)
    depth = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[:, None], (1, 256))
    depth = np.clip(depth.astype(int) + rng.integers(-8, 8, depth.shape), 0, 255).astype(np.uint8)
    return {"example_pose.png": Image.fromarray(pose), "example_depth.png": Image.fromarray(depth).convert("RGB"),
            "odd_mask.png": Image.fromarray(np.full((40, 72), 255, np.uint8))}


@pytest.fixture(scope="session")
def server(comfy_path, host_weights, example_images, tmp_path_factory):
    base = host_env.prepare_base(tmp_path_factory.mktemp("comfy_base"), host_weights, example_images)
    host = host_env.HostServer(comfy_path, base)
    try:
        host.wait_ready()
        yield host
    finally:
        host.stop()
