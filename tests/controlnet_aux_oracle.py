"""controlnet_aux as a test oracle, without its package ``__init__`` (which pulls in timm and
torchvision, and the registry's torchvision does not load beside this CPU torch).

Point ``CONTROLNET_AUX_SRC`` at the ``src`` folder of a controlnet_aux checkout (the folder that
holds ``controlnet_aux/``); tests that need it skip with that instruction otherwise. Only the
annotator submodules are imported (``controlnet_aux.lineart``, ``.mlsd``, ``.pidi``, ``.teed``,
``.hed``): they need torch, numpy, OpenCV, PIL, huggingface_hub and einops. If einops is not
installed, a stand-in for the one pattern those modules use (``h w c -> 1 c h w``) is provided.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest

ENV = "CONTROLNET_AUX_SRC"


def _einops_stand_in() -> types.ModuleType:
    module = types.ModuleType("einops")

    def rearrange(tensor, pattern: str):
        if pattern.replace(" ", "") != "hwc->1chw":
            raise NotImplementedError(f"einops stand-in: only 'h w c -> 1 c h w', found {pattern!r}")
        return tensor.permute(2, 0, 1).unsqueeze(0)

    module.rearrange = rearrange
    return module


def controlnet_aux_module(name: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``controlnet_aux.<name>`` from the checkout in $CONTROLNET_AUX_SRC; skips when unset."""
    source = os.environ.get(ENV)
    if not source:
        pytest.skip(f"set {ENV}=<controlnet_aux checkout>/src to compare against controlnet_aux")
    package_dir = Path(source) / "controlnet_aux"
    if not (package_dir / "util.py").is_file():
        pytest.fail(f"{ENV}={source!r}: expected a folder holding controlnet_aux/util.py")
    for module_name in [key for key in sys.modules if key == "controlnet_aux" or key.startswith("controlnet_aux.")]:
        monkeypatch.delitem(sys.modules, module_name)
    package = types.ModuleType("controlnet_aux")
    package.__path__ = [str(package_dir)]  # a namespace for the submodules; __init__.py is not run
    monkeypatch.setitem(sys.modules, "controlnet_aux", package)
    try:
        importlib.import_module("einops")
    except ImportError:
        monkeypatch.setitem(sys.modules, "einops", _einops_stand_in())
    return importlib.import_module(f"controlnet_aux.{name}")
