"""The CONTROL_NET object the host's sampler runs: a `comfy.controlnet.ControlBase` over a ControlStack.

One `PackControl` carries every entry applied by one of our nodes (a single ControlNet or a whole
stack). It is shared by positive and negative, so the sampler batches cond and uncond into one
call, and it evaluates all its entries in one `ControlStack.residuals` call whose hint-block
outputs are cached across steps. Controls that were already on the conditioning (the host's own
apply node, other packs) sit in `previous_controlnet` and are summed in, exactly as the host does.

The same class is what our loader outputs, so the host's own "Apply ControlNet" node can use it:
that node calls `copy().set_cond_hint(...)`, and an object with no units of its own then runs its
loaded ControlNet with the hint, strength and percent range the host node set.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

import comfy.controlnet
import comfy.model_management
import comfy.model_patcher

from ..controlnet_core import ControlEntry, ControlNetModel, ControlStack, load_controlnet
from .control_units import (ControlUnit, check_controlnet_fits_unet, check_residual_shapes, mode_settings,
                            sigma_in_range, sum_controls, unet_skip_channels)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedControlNet:
    """A ControlNet module ready for the host: the core model, its ModelPatcher and a display name."""

    model: ControlNetModel
    patcher: Any
    name: str
    dtype: torch.dtype

    @property
    def family(self) -> str:
        return self.model.config.family

    @property
    def residual_count(self) -> int:
        return self.model.config.num_down_residuals + 1


def host_compute_dtype(weight_dtype: torch.dtype | None) -> tuple[torch.dtype, torch.device]:
    """The dtype and device the host picks for a UNet-sized model on this machine (as its own
    ControlNet loader does): fp32 on CPU, fp16/bf16 on GPUs that run them."""
    load_device = comfy.model_management.get_torch_device()
    storage_dtype = comfy.model_management.unet_dtype(
        model_params=-1, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32], weight_dtype=weight_dtype)
    manual_cast = comfy.model_management.unet_manual_cast(storage_dtype, load_device)
    # Weights are stored in the compute dtype: the core model has no per-layer cast-on-the-fly ops.
    return (manual_cast or storage_dtype), load_device


class PatcherHandle(torch.nn.Module):
    """What the ModelPatcher manages: the core model as a submodule. The patcher writes its
    bookkeeping (device, model_loaded_weight_memory, lowvram flags…) as attributes of the module it
    is given; this keeps them off the core model, whose `device` is a read-only property."""

    def __init__(self, control_model: ControlNetModel) -> None:
        super().__init__()
        self.control_model = control_model
        self.device = control_model.device


def wrap_model(model: ControlNetModel, name: str, dtype: torch.dtype, load_device: torch.device) -> LoadedControlNet:
    """Wrap a core model in a ModelPatcher so the memory manager loads/offloads it with the UNet."""
    patcher = comfy.model_patcher.ModelPatcher(
        PatcherHandle(model), load_device=load_device, offload_device=comfy.model_management.unet_offload_device())
    return LoadedControlNet(model=model, patcher=patcher, name=name, dtype=dtype)


# Same file loaded twice (two loader nodes, a re-queued prompt after the node cache was cleared)
# reuses the weights while anything still holds them.
_FILE_CACHE: "weakref.WeakValueDictionary[tuple, LoadedControlNet]" = weakref.WeakValueDictionary()
_HOST_OBJECT_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, LoadedControlNet]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def load_file(path: str, display_name: str, progress: Callable[[int], None] | None = None) -> LoadedControlNet:
    """Load (or reuse) the ControlNet in `path`, in the dtype the host picks for its device."""
    stat = os.stat(path)
    dtype, load_device = host_compute_dtype(None)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, dtype)
    with _CACHE_LOCK:
        cached = _FILE_CACHE.get(key)
        if cached is not None:
            return cached
        model = load_controlnet(path, dtype=dtype, device=str(comfy.model_management.unet_offload_device()))
        if progress:
            progress(1)
        loaded = wrap_model(model, display_name, dtype, load_device)
        _FILE_CACHE[key] = loaded
        return loaded


def from_host_controlnet(control: Any) -> LoadedControlNet | None:
    """Run a CONTROL_NET from the host's own loader through our core when it is a plain ldm ControlNet.

    Its weights are read from the host module (shared storage, no copy when the dtype matches), so
    results match the host path. Anything else (T2I-Adapter, Control-LoRA, shuffle/global pooling,
    SD3/Flux/HunyuanDiT nets) returns None and the caller keeps the host object as it is.
    """
    if type(control) is not comfy.controlnet.ControlNet:
        return None
    module = getattr(control, "control_model", None)
    if module is None or control.global_average_pooling or control.latent_format is not None:
        return None
    if type(module).__name__ != "ControlNet" or getattr(module, "control_add_embedding", None) is not None:
        return None  # union ControlNets and non-UNet families stay on the host path
    with _CACHE_LOCK:
        cached = _HOST_OBJECT_CACHE.get(module)
        if cached is not None:
            return cached
        dtype = control.manual_cast_dtype or module.dtype
        try:
            # Same dtype: the core model shares the host module's tensors (no copy).
            model = load_controlnet(module.state_dict(), dtype=dtype, device="cpu")
        except ValueError as exc:  # core cannot read it: stay on the host path
            log.info("ControlNet from the host loader stays on the host path: %s", exc)
            return None
        loaded = wrap_model(model, "ControlNet from the host's loader", dtype, control.load_device)
        _HOST_OBJECT_CACHE[module] = loaded
        return loaded


class PackControl(comfy.controlnet.ControlBase):
    """Our control object: the host's ControlBase contract over a controlnet_core ControlStack."""

    def __init__(self, units: list[ControlUnit] | None = None, source: LoadedControlNet | None = None) -> None:
        super().__init__()
        self.units: list[ControlUnit] = list(units or [])
        # Set only on objects straight out of our loader: used when the host's apply node sets a hint.
        self.source = source
        self._stack: ControlStack | None = None
        self._run_units: list[ControlUnit] = []
        self._entry_ranges: dict[int, tuple[float, float]] = {}
        self._model_sampling = None
        self._base_name = "the base model"
        self._expected_channels: list[int] | None = None

    # ---- what the units are -------------------------------------------------------------------
    def effective_units(self) -> list[ControlUnit]:
        """Our own units, or the single unit the host's apply node configured via set_cond_hint."""
        if self.units:
            return self.units
        if self.source is not None and self.cond_hint_original is not None:
            hint = self.cond_hint_original.movedim(1, -1)  # host keeps B×C×H×W; a unit holds IMAGE B×H×W×C
            start, end = self.timestep_percent_range
            return [ControlUnit(net=self.source, image=hint, strength=float(self.strength), start=start, end=end,
                                label=self.source.name)]
        return []

    def with_units(self, extra: list[ControlUnit]) -> "PackControl":
        """A copy whose stack has `extra` appended (same previous chain)."""
        copied = self.copy()
        copied.units = self.effective_units() + list(extra)
        copied.source = None
        copied.previous_controlnet = self.previous_controlnet  # copy() leaves the chain to the caller
        return copied

    # ---- ControlBase contract -------------------------------------------------------------------
    def copy(self) -> "PackControl":
        copied = PackControl(self.units, self.source)
        self.copy_to(copied)
        return copied

    def pre_run(self, model, percent_to_timestep_function) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self._model_sampling = model.model_sampling
        config = getattr(model, "model_config", None)
        unet_config = dict(getattr(config, "unet_config", {}) or {})
        self._base_name = type(config).__name__ if config is not None else type(model).__name__
        self._expected_channels = unet_skip_channels(unet_config)
        entries = []
        self._entry_ranges = {}
        self._run_units = self.effective_units()
        for unit in self._run_units:
            loaded: LoadedControlNet = unit.net
            cfg = loaded.model.config
            check_controlnet_fits_unet(loaded.name, cfg.family, cfg.residual_channels(), cfg.context_dim,
                                       cfg.adm_in_channels is not None, self._base_name, unet_config)
            weights, uncond_strength = mode_settings(unit.mode, loaded.residual_count)
            entry = ControlEntry(model=loaded.model, image=unit.image, strength=unit.strength, start=unit.start,
                                 end=unit.end, mask=unit.mask, weights=weights, uncond_strength=uncond_strength)
            self._entry_ranges[id(entry)] = (float(percent_to_timestep_function(unit.start)),
                                             float(percent_to_timestep_function(unit.end)))
            entries.append(entry)
        self._stack = ControlStack(entries) if entries else None

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self._stack is None:
            return previous
        sigma = t[0]  # a tensor: compared in its dtype, as the host does

        def is_active(entry) -> bool:
            sigma_start, sigma_end = self._entry_ranges[id(entry)]
            return sigma_in_range(sigma, sigma_start, sigma_end)

        loaded = [unit.net for unit in self._run_units]
        dtype = loaded[0].dtype
        ms = self._model_sampling
        timestep = ms.timestep(t).to(dtype)
        x_in = ms.calculate_input(t, x_noisy).to(dtype)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        context = comfy.model_management.cast_to_device(context, x_noisy.device, dtype)
        y = cond.get("y")
        if y is not None:
            y = y.to(device=x_noisy.device, dtype=dtype)
        residuals = self._stack.residuals(x_in, timestep, context, y=y, percent=None, active=is_active,
                                          chunk_kinds=transformer_options.get("cond_or_uncond"))
        if residuals is None:
            return previous
        names = ", ".join(sorted({net.name for net in loaded}))
        check_residual_shapes(names, self._base_name, residuals.down, residuals.mid, x_noisy, self._expected_channels)
        ours = {"input": [], "middle": [residuals.mid], "output": list(residuals.down)}
        return sum_controls(previous, ours)

    def cleanup(self) -> None:
        self._stack = None  # drops the cached hint embeddings with it
        self._run_units = []
        self._entry_ranges = {}
        self._model_sampling = None
        super().cleanup()

    def get_models(self) -> list:
        models = super().get_models()
        seen = set()
        for unit in self.effective_units():
            patcher = unit.net.patcher
            if id(patcher) not in seen:
                seen.add(id(patcher))
                models.append(patcher)
        return models

    def inference_memory_requirements(self, dtype) -> int:
        # Working memory of the forward passes is counted by the host with the UNet's; weights are
        # counted through get_models. Nothing else to reserve beyond what the chain needs.
        return super().inference_memory_requirements(dtype)
