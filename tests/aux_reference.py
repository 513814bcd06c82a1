"""controlnet_aux's own code as a test oracle, where it is installed.

controlnet_aux cannot be imported normally here: its package ``__init__`` imports torchvision (whose
registry wheel does not load beside the CPU torch) and downloads through huggingface_hub. The
annotator modules the tests compare against need neither, so this loads them by file under a
stand-in parent package, with inert stand-ins for the two names they import but never call on the
paths used (torchvision's ToTensor/ToPILImage, scipy's gaussian_filter).

It is installed with ``pip install --no-deps controlnet_aux`` (plus mediapipe for the face mesh; see
annotators/README.md). Without it, the oracle tests skip with that reason; the hand-derived tests
cover the same code either way.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

PARENT = "controlnet_aux_reference"
INSTALL_HINT = "controlnet_aux is not installed (pip install --no-deps controlnet_aux)"


def aux_root() -> Path | None:
    spec = importlib.util.find_spec("controlnet_aux")  # finds the folder without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def load(monkeypatch: pytest.MonkeyPatch, dotted: str) -> types.ModuleType:
    """controlnet_aux's ``dotted`` module (e.g. ``open_pose.face``), or skip the test if not installed."""
    root = aux_root()
    if root is None:
        pytest.skip(INSTALL_HINT)
    for name in [key for key in sys.modules if key == PARENT or key.startswith(PARENT + ".")]:
        monkeypatch.delitem(sys.modules, name)  # load afresh under this test's stand-ins
    parts = dotted.split(".")
    for depth in range(len(parts)):  # stand-in packages, so the real __init__ files never run
        name = ".".join([PARENT, *parts[:depth]])
        package = types.ModuleType(name)
        package.__path__ = [str(root.joinpath(*parts[:depth]))]
        monkeypatch.setitem(sys.modules, name, package)
    inert = types.ModuleType("inert")
    inert.ToTensor = inert.ToPILImage = inert.gaussian_filter = lambda *args, **kwargs: None
    for name in ("torchvision", "torchvision.transforms", "scipy", "scipy.ndimage", "scipy.ndimage.filters"):
        monkeypatch.setitem(sys.modules, name, inert)
    return importlib.import_module(f"{PARENT}.{dotted}")
