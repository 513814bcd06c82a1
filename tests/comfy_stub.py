"""A minimal stand-in for the ComfyUI modules the node layer imports, so CI can test the nodes
without a host. It mirrors only the parts of the host's contract our nodes touch (ControlBase's
fields, copy_to, set_cond_hint, chaining; folder_paths lookups); tests/host/ checks the real thing.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "pack_under_test"
HOST_MODULES = ("comfy", "comfy.controlnet", "comfy.hooks", "comfy.model_management", "comfy.model_patcher",
                "comfy.ops", "comfy.utils", "folder_paths")


class ControlBase:
    def __init__(self):
        self.cond_hint_original = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range = None
        self.previous_controlnet = None
        self.global_average_pooling = False
        self.latent_format = None
        self.extra_hooks = None

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0), vae=None, extra_concat=()):
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        return self

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model, percent_to_timestep_function):
        self.timestep_range = tuple(percent_to_timestep_function(p) for p in self.timestep_percent_range)
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        self.timestep_range = None

    def get_models(self):
        return self.previous_controlnet.get_models() if self.previous_controlnet is not None else []

    def get_extra_hooks(self):
        return []

    def inference_memory_requirements(self, dtype):
        if self.previous_controlnet is not None:
            return self.previous_controlnet.inference_memory_requirements(dtype)
        return 0

    def copy_to(self, c):
        c.cond_hint_original = self.cond_hint_original
        c.strength = self.strength
        c.timestep_percent_range = self.timestep_percent_range
        c.global_average_pooling = self.global_average_pooling
        c.latent_format = self.latent_format
        c.extra_hooks = self.extra_hooks.clone() if self.extra_hooks else None


class ControlNet(ControlBase):
    """Stands in for the host's ldm ControlNet object (never matched by from_host_controlnet's type test)."""


class T2IAdapter(ControlBase):
    """Stands in for the host's T2I-Adapter object (never matched by from_host_controlnet's type test)."""


class WeightHook:
    def __init__(self, strength_model=1.0, strength_clip=1.0):
        self.weights, self.weights_clip, self.need_weight_init = None, None, True


class HookGroup:
    def __init__(self):
        self.hooks = []

    def add(self, hook):
        if hook not in self.hooks:
            self.hooks.append(hook)

    def clone(self):
        clone = HookGroup()
        clone.hooks = list(self.hooks)
        return clone


class disable_weight_init:  # noqa: N801 - the host's name
    """The host's plain layer classes (no casting): torch's own here."""
    Conv2d, Linear, GroupNorm, LayerNorm = torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        self.current = min(value, self.total)

    def update(self, value):
        self.update_absolute(self.current + value)


def build_modules(controlnet_folder: Path) -> dict[str, types.ModuleType]:
    comfy = types.ModuleType("comfy")
    controlnet = types.ModuleType("comfy.controlnet")
    controlnet.ControlBase, controlnet.ControlNet, controlnet.T2IAdapter = ControlBase, ControlNet, T2IAdapter
    hooks = types.ModuleType("comfy.hooks")
    hooks.WeightHook, hooks.HookGroup = WeightHook, HookGroup
    ops = types.ModuleType("comfy.ops")
    ops.disable_weight_init = disable_weight_init
    ops.pick_operations = lambda weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False: disable_weight_init
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.unet_dtype = lambda model_params=0, supported_dtypes=(), weight_dtype=None: torch.float32
    mm.unet_manual_cast = lambda dtype, device, supported_dtypes=None: None
    mm.cast_to_device = lambda tensor, device, dtype, copy=False: tensor.to(device=device, dtype=dtype)
    patcher = types.ModuleType("comfy.model_patcher")
    patcher.ModelPatcher = ModelPatcher
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    comfy.controlnet, comfy.model_management, comfy.model_patcher, comfy.utils = controlnet, mm, patcher, utils
    comfy.hooks, comfy.ops = hooks, ops

    folder_paths = types.ModuleType("folder_paths")
    folders = [str(controlnet_folder)]
    folder_paths.get_folder_paths = lambda name: folders if name == "controlnet" else []

    def get_full_path(name, filename):
        # The host's normalisation: a name can never climb out of the folder.
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for folder in folder_paths.get_folder_paths(name):
            candidate = os.path.join(folder, filename)
            if os.path.isfile(candidate):
                return candidate
        return None

    folder_paths.get_full_path = get_full_path
    folder_paths.get_filename_list = lambda name: sorted(
        p.name for f in folder_paths.get_folder_paths(name) for p in Path(f).glob("*.safetensors"))
    return {"comfy": comfy, "comfy.controlnet": controlnet, "comfy.hooks": hooks, "comfy.model_management": mm,
            "comfy.model_patcher": patcher, "comfy.ops": ops, "comfy.utils": utils, "folder_paths": folder_paths}


def import_nodes(monkeypatch, controlnet_folder: Path):
    """Import nodes/controlnet_nodes.py against the stub, as a submodule of a synthetic package that
    points at the repo (so its relative imports work and nodes/__init__.py's other imports stay out)."""
    for name, module in build_modules(controlnet_folder).items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in list(sys.modules):
        if name == PACK_NAME or name.startswith(PACK_NAME + "."):
            monkeypatch.delitem(sys.modules, name)
    package = types.ModuleType(PACK_NAME)
    package.__path__ = [str(REPO_ROOT)]
    nodes_package = types.ModuleType(f"{PACK_NAME}.nodes")
    nodes_package.__path__ = [str(REPO_ROOT / "nodes")]
    monkeypatch.setitem(sys.modules, PACK_NAME, package)
    monkeypatch.setitem(sys.modules, f"{PACK_NAME}.nodes", nodes_package)
    return importlib.import_module(f"{PACK_NAME}.nodes.controlnet_nodes")


def import_preprocessor_nodes(monkeypatch, tmp_path: Path):
    """Import nodes/preprocessor_nodes.py against the stub plus what it uses on top of it: a models
    dir, model folder registration, a temp dir, save paths and a recording progress bar.
    Returns (module, registered folders by name, recorded progress updates)."""
    import_nodes(monkeypatch, tmp_path / "controlnet")  # installs the stub modules and the package
    folder_paths = sys.modules["folder_paths"]
    folder_paths.models_dir = str(tmp_path / "models")
    registered: dict[str, list[str]] = {}
    folder_paths.add_model_folder_path = lambda name, path, is_default=False: registered.setdefault(name, []).append(path)
    folder_paths.get_folder_paths = lambda name: list(registered.get(name, []))
    (tmp_path / "temp").mkdir(exist_ok=True)
    folder_paths.get_temp_directory = lambda: str(tmp_path / "temp")
    folder_paths.get_save_image_path = lambda prefix, output_dir, width=0, height=0: (output_dir, prefix, 1, "", prefix)
    model_management = sys.modules["comfy.model_management"]
    model_management.throw_exception_if_processing_interrupted = lambda: None
    # The host's model manager, reduced to what the contract needs: it records every load request
    # and moves the patcher's model to its load device, as load_models_gpu does.
    model_management.load_requests = []

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        model_management.load_requests.append((list(models), force_full_load))
        for patcher in models:
            patcher.model.to(patcher.load_device)

    model_management.load_models_gpu = load_models_gpu
    progress: list[tuple[int, int]] = []

    class RecordingProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            progress.append((value, total or self.total))

    sys.modules["comfy.utils"].ProgressBar = RecordingProgressBar
    module = importlib.import_module(f"{PACK_NAME}.nodes.preprocessor_nodes")
    return module, registered, progress


def import_train_nodes(monkeypatch, tmp_path: Path):
    """Import nodes/train_nodes.py against the stub plus what it uses on top of it: an input folder,
    the models/controlnet folder, the memory manager's load call, the interrupt check and a recording
    progress bar. Returns (module, recorded progress updates, interrupt switch: a list, set [True] to cancel)."""
    controlnet_folder = tmp_path / "models" / "controlnet"
    controlnet_folder.mkdir(parents=True, exist_ok=True)
    import_nodes(monkeypatch, controlnet_folder)
    folder_paths = sys.modules["folder_paths"]
    (tmp_path / "input").mkdir(exist_ok=True)
    folder_paths.get_input_directory = lambda: str(tmp_path / "input")
    interrupt: list[bool] = []
    mm = sys.modules["comfy.model_management"]
    mm.load_models_gpu = lambda models, **kwargs: None

    def throw_exception_if_processing_interrupted():
        if interrupt:
            raise RuntimeError("Processing interrupted")  # the host raises its InterruptProcessingException

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    progress: list[tuple[int, int]] = []

    class RecordingProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            self.current = value
            progress.append((value, total or self.total))

        def update(self, value):
            self.update_absolute(getattr(self, "current", 0) + value)

    sys.modules["comfy.utils"].ProgressBar = RecordingProgressBar
    module = importlib.import_module(f"{PACK_NAME}.nodes.train_nodes")
    return module, progress, interrupt
