"""The CONTROL_NET object the host's sampler runs: a `comfy.controlnet.ControlBase` over a ControlStack.

One `PackControl` carries every entry applied by one of our nodes (a single control or a whole
stack), of any control system: ControlNet, T2I-Adapter, ControlNeXt, Control-LoRA, LLLite. It is
shared by positive and negative, so the sampler batches cond and uncond into one call, and it
evaluates all its entries in one `ControlStack.contributions` call whose per-image work (hint
blocks, adapter features, LLLite embeddings) is cached across steps. The contribution reaches the
UNet three ways: the control dict get_control returns (skip, middle and encoder-stream additions),
transformer patches registered on this call's options (ControlNeXt's stream function, LLLite's
attention inputs) and weight hooks (ControlNeXt's UNet weights, applied by the host while this
control is on the conditioning). Control-LoRA entries build their ControlNet in pre_run from the
sampled model's UNet. Controls that were already on the conditioning (the host's own apply node,
other packs) sit in `previous_controlnet` and are summed in, exactly as the host does.

The same class is what our loader outputs, so the host's own "Apply ControlNet" node can use it:
that node calls `copy().set_cond_hint(...)`, and an object with no units of its own then runs its
loaded control with the hint, strength and percent range the host node set.
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
import comfy.ops

from ..controlnet_core import (ControlEntry, ControlModel, ControlNetError, ControlStack, InputError, UNetLayout,
                              load_control, load_t2i_adapter)
from ..controlnet_core.controlnet import load_controlnet
from ..controlnet_core.context import window_from_options
from ..controlnet_core.fast import speed_mode
from ..controlnet_core.keyframes import HOLD, NEUTRAL
from ..controlnet_core.union import UnionControl, load_union
from .control_units import (ControlUnit, add_transformer_patches, attention_patches, check_contribution,
                            host_control_dict, percent_of_sigma, sigma_in_range, stream_patches, sum_controls)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedControl:
    """A control model ready for the host: the core model, its ModelPatcher and a display name."""

    model: ControlModel
    patcher: Any
    name: str

    @property
    def system(self) -> str:
        return self.model.system


def host_operations(weight_dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype | None, Any, torch.device]:
    """(storage dtype, compute dtype when it differs, layer classes, device) the host picks for a
    UNet-sized model on this machine, as its own ControlNet loader does: the weights stay in their
    storage dtype and the host's casting layers cast them per layer (and load them partially in
    low-VRAM mode)."""
    load_device = comfy.model_management.get_torch_device()
    storage_dtype = comfy.model_management.unet_dtype(
        model_params=-1, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32], weight_dtype=weight_dtype)
    manual_cast = comfy.model_management.unet_manual_cast(storage_dtype, load_device)
    operations = comfy.ops.pick_operations(storage_dtype, manual_cast, disable_fast_fp8=True)
    return storage_dtype, manual_cast, operations, load_device


class PatcherHandle(torch.nn.Module):
    """What the ModelPatcher manages: the core model as a submodule. The patcher writes its
    bookkeeping (device, model_loaded_weight_memory, lowvram flags…) as attributes of the module it
    is given; this keeps them off the core model, whose `device` is a read-only property."""

    def __init__(self, control_model: ControlModel) -> None:
        super().__init__()
        self.control_model = control_model
        self.device = control_model.device


def wrap_model(model: ControlModel, name: str, load_device: torch.device) -> LoadedControl:
    """Wrap a core model in a ModelPatcher so the memory manager loads/offloads it with the UNet."""
    patcher = comfy.model_patcher.ModelPatcher(
        PatcherHandle(model), load_device=load_device, offload_device=comfy.model_management.unet_offload_device())
    return LoadedControl(model=model, patcher=patcher, name=name)


# Same file loaded twice (two loader nodes, a re-queued prompt after the node cache was cleared)
# reuses the weights while anything still holds them.
_FILE_CACHE: "weakref.WeakValueDictionary[tuple, LoadedControl]" = weakref.WeakValueDictionary()
_HOST_OBJECT_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, LoadedControl]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _file_key(path: str | None) -> tuple | None:
    if path is None:
        return None
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_mtime_ns, stat.st_size


def load_file(path: str, display_name: str, companion: str | None = None, companion_kind: str = "auto",
              progress: Callable[[int], None] | None = None, *, global_average_pooling: bool | None = None,
              base_unet: dict[str, torch.Tensor] | None = None) -> LoadedControl:
    """Load (or reuse) the control in `path` (with a ControlNeXt module's UNet weights in `companion`),
    stored and computed as the host would for this device. global_average_pooling: force a shuffle
    ControlNet's pooling on or off (None: by its diffusers config.json or file name); base_unet: the base model's UNet weights, for
    diff ControlNets (a control built from them is not shared through the file cache)."""
    storage_dtype, compute_dtype, operations, load_device = host_operations(None)
    key = (_file_key(path), _file_key(companion), companion_kind, storage_dtype, compute_dtype, global_average_pooling)
    with _CACHE_LOCK:
        cached = _FILE_CACHE.get(key) if base_unet is None else None
        if cached is not None:
            return cached
        model = load_control(path, companion=companion, companion_kind=companion_kind, base_unet=base_unet,
                             global_average_pooling=global_average_pooling, dtype=storage_dtype,
                             device=str(comfy.model_management.unet_offload_device()), operations=operations,
                             compute_dtype=compute_dtype)
        model.source = display_name  # messages name the file as the workflow does
        if progress:
            progress(1)
        loaded = wrap_model(model, display_name, load_device)
        if base_unet is None:
            _FILE_CACHE[key] = loaded
        return loaded


def base_unet_weights(model: Any) -> dict[str, torch.Tensor]:
    """The UNet weights of a MODEL (ModelPatcher) as the host's DiffControlNetLoader reads them: the
    model is loaded first, so the weight patches on it (LoRAs) are applied, then its state dict is
    taken (keys `diffusion_model.*`)."""
    comfy.model_management.load_models_gpu([model])
    return model.model_state_dict(filter_prefix="diffusion_model.")


def from_host_controlnet(control: Any) -> LoadedControl | None:
    """Run a CONTROL_NET from the host's own loader through our core when it is a plain ldm
    ControlNet, a T2I-Adapter (full, XL or light) or a Control-LoRA.

    Its weights are read from the host module (shared storage, no copy when the dtype matches), so
    results match the host path; a Union ControlNet too (its type, from the host's SetUnionControlNetType,
    is applied with `host_union_type`); a shuffle ControlNet keeps its pooling (and acts on the positive side
    only, as the original does). A Control-LoRA is read from the host object's file weights, stored as
    our loader stores it, and built on the sampled model's UNet at each run, as the host builds it.
    Anything else (Stable Cascade, SD3/Flux/HunyuanDiT nets) returns None and the caller keeps the host
    object."""
    module, build = None, None
    if type(control) is comfy.controlnet.ControlNet:
        module = getattr(control, "control_model", None)
        if module is None or control.latent_format is not None:
            return None
        if type(module).__name__ != "ControlNet":
            return None  # non-UNet families stay on the host path
        dtype = control.manual_cast_dtype or module.dtype
        pooling = bool(control.global_average_pooling)  # a shuffle ControlNet: pooled, and cond-only here
        if getattr(module, "control_add_embedding", None) is not None:
            build = lambda: load_union(module.state_dict(), dtype=dtype, device="cpu")  # noqa: E731
            label = "Union ControlNet from the host's loader"
        else:
            build = lambda: load_controlnet(module.state_dict(), dtype=dtype, device="cpu",  # noqa: E731
                                            global_average_pooling=pooling)
            label = "ControlNet from the host's loader"
        load_device = control.load_device
    elif type(control) is getattr(comfy.controlnet, "T2IAdapter", None):
        module = getattr(control, "t2i_model", None)
        if type(module).__name__ not in ("Adapter", "Adapter_light"):
            return None  # Stable Cascade controls share the host's T2IAdapter class
        build = lambda: load_t2i_adapter(module.state_dict(), device="cpu")  # noqa: E731
        load_device, label = control.device, "T2I-Adapter from the host's loader"
    elif type(control) is getattr(comfy.controlnet, "ControlLora", None):
        weights = control.control_weights  # the file's tensors; the host builds its ControlNet at pre_run
        storage_dtype, compute_dtype, operations, load_device = host_operations(None)
        build = lambda: load_control(weights, dtype=storage_dtype, operations=operations,  # noqa: E731
                                     device=str(comfy.model_management.unet_offload_device()),
                                     compute_dtype=compute_dtype)
        module, label = control, "Control-LoRA from the host's loader"  # the cache key: the loader's object
    if module is None:
        return None
    with _CACHE_LOCK:
        cached = _HOST_OBJECT_CACHE.get(module)
        if cached is not None:
            return cached
        try:
            model = build()  # same dtype: the core model shares the host module's tensors (no copy)
        except ValueError as exc:  # core cannot read it: stay on the host path
            log.info("%s stays on the host path: %s", label, exc)
            return None
        loaded = wrap_model(model, label, load_device)
        _HOST_OBJECT_CACHE[module] = loaded
        return loaded


def with_union_type(loaded: LoadedControl, control_type: list) -> LoadedControl:
    """A Union control with the type the host's SetUnionControlNetType set ([id], or [] for auto):
    a view of the same network, managed by the same patcher."""
    if len(control_type) > 1:
        raise InputError(f"{loaded.name}: one control type per entry, found {list(control_type)}; stack one "
                         "entry per type (entries of the same Union file run in one pass)")
    model = loaded.model.with_type(int(control_type[0]) if control_type else None)
    return LoadedControl(model=model, patcher=loaded.patcher, name=f"{loaded.name} ({model.type_name})")


def host_union_type(control: Any, loaded: LoadedControl | None) -> LoadedControl | None:
    """`loaded` (from_host_controlnet of the host object `control`) with the Union type the host's
    SetUnionControlNetType set on that object (none set: "auto", as the host runs it)."""
    if loaded is None or not isinstance(loaded.model, UnionControl):
        return loaded
    return with_union_type(loaded, list(getattr(control, "extra_args", {}).get("control_type", [])))


def weight_hooks(controls: list[Any]):
    """One host hook group with the UNet weight patches of these controls (ControlNeXt's fine-tuned
    UNet subset), or None. The host applies them while sampling with conditioning that carries this
    control, and restores the weights afterwards."""
    hooks, seen = [], set()
    for control in controls:
        if not isinstance(control, LoadedControl) or id(control) in seen:
            continue
        seen.add(id(control))
        patches = control.model.unet_weight_patches()
        if not patches:
            continue
        import comfy.hooks  # only needed (and only in hosts that have it) when a control patches weights

        hook = comfy.hooks.WeightHook()
        hook.weights = {f"diffusion_model.{key}": (kind, (tensor,)) for key, (kind, tensor) in patches.items()}
        hook.need_weight_init = False  # keys are the model's own state-dict names already
        hooks.append(hook)
    if not hooks:
        return None
    group = comfy.hooks.HookGroup()
    for hook in hooks:
        group.add(hook)
    return group


class PackControl(comfy.controlnet.ControlBase):
    """Our control object: the host's ControlBase contract over a controlnet_core ControlStack."""

    def __init__(self, units: list[ControlUnit] | None = None, source: LoadedControl | None = None) -> None:
        super().__init__()
        self.units: list[ControlUnit] = list(units or [])
        # Set only on objects straight out of our loader: used when the host's apply node sets a hint.
        self.source = source
        self._stack: ControlStack | None = None
        self._run_units: list[ControlUnit] = []
        self._entry_ranges: dict[int, tuple[float, float]] = {}
        self._keyframe_sigmas: dict[float, float] = {}
        self._percent_to_sigma = None
        self._model_sampling = None
        self._layout: UNetLayout | None = None
        self.extra_hooks = weight_hooks([unit.net for unit in self.units]) if self.units else self.extra_hooks

    # ---- what the units are -------------------------------------------------------------------
    def typed_source(self) -> LoadedControl | None:
        """Our loader's control as the host's SetUnionControlNetType node left it: on a Union file,
        extra_args["control_type"] = [id] picks the entry's control type, [] none ("auto")."""
        source, control_type = self.source, getattr(self, "extra_args", {}).get("control_type")
        if source is None or control_type is None or not isinstance(source.model, UnionControl):
            return source
        return with_union_type(source, control_type)

    def effective_units(self) -> list[ControlUnit]:
        """Our own units, or the single unit the host's apply node configured via set_cond_hint."""
        if self.units:
            return self.units
        if self.source is not None and self.cond_hint_original is not None:
            hint = self.cond_hint_original.movedim(1, -1)  # host keeps B×C×H×W; a unit holds IMAGE B×H×W×C
            start, end = self.timestep_percent_range
            return [ControlUnit(net=self.typed_source(), image=hint, strength=float(self.strength), start=start, end=end,
                                label=self.source.name)]
        return []

    def set_cond_hint(self, *args, **kwargs):
        out = super().set_cond_hint(*args, **kwargs)
        if not self.units and self.source is not None:  # the host's apply node: its control may patch weights
            self.extra_hooks = weight_hooks([self.source])
        return out

    def with_units(self, extra: list[ControlUnit]) -> "PackControl":
        """A copy whose stack has `extra` appended (same previous chain)."""
        copied = PackControl(self.effective_units() + list(extra))
        self.copy_to(copied)
        copied.extra_hooks = weight_hooks([unit.net for unit in copied.units])
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
        base_name = type(config).__name__ if config is not None else type(model).__name__
        self._layout = UNetLayout.from_unet_config(dict(getattr(config, "unet_config", {}) or {}),
                                                   f"the base model {base_name}")
        entries = []
        self._entry_ranges = {}
        self._keyframe_sigmas = {}
        self._run_units = self.effective_units()
        for unit in self._run_units:
            control_model = unit.net.model
            if self._layout is not None:
                control_model.check_fits(self._layout)
            entry = ControlEntry(model=control_model, image=unit.image, strength=unit.strength, start=unit.start,
                                 end=unit.end, mask=unit.mask, mode=unit.mode, resize_mode=unit.resize_mode,
                                 reuse=speed_mode(unit.speed_mode), weights=unit.weights, keyframes=unit.keyframes,
                                 frame_indices=unit.frame_indices, layout=self._layout)
            self._entry_ranges[id(entry)] = (float(percent_to_timestep_function(unit.start)),
                                             float(percent_to_timestep_function(unit.end)))
            for start in (unit.keyframes.starts if unit.keyframes else ()):
                self._keyframe_sigmas[start] = float(percent_to_timestep_function(start))
            entries.append(entry)
        self._percent_to_sigma = percent_to_timestep_function
        self._bind_base_unet(model, f"the base model {base_name}")
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

        ms = self._model_sampling
        x_in = ms.calculate_input(t, x_noisy)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        context = comfy.model_management.cast_to_device(context, x_noisy.device, x_noisy.dtype)
        y = cond.get("y")
        if y is not None:
            y = y.to(device=x_noisy.device, dtype=x_noisy.dtype)
        contribution = self._stack.contributions(x_in, ms.timestep(t), context, y=y, active=is_active,
                                                 chunk_kinds=transformer_options.get("cond_or_uncond"),
                                                 layout=self._layout, keyframes=self._keyframe_state(sigma),
                                                 window=self._window(x_noisy, transformer_options))
        if contribution is None:
            return previous
        names = ", ".join(sorted({unit.net.name for unit in self._run_units}))
        check_contribution(names, self._layout, contribution, x_noisy)
        add_transformer_patches(transformer_options, {**stream_patches(contribution), **attention_patches(contribution)})
        num_blocks = self._layout.num_input_blocks if self._layout is not None else max(
            [*contribution.skips, *contribution.encoder, -1]) + 1
        return sum_controls(previous, host_control_dict(contribution, num_blocks))

    def _base_unet_models(self, units: list[ControlUnit]) -> list[ControlModel]:
        models = {id(unit.net.model): unit.net.model for unit in units
                  if isinstance(unit.net, LoadedControl) and unit.net.model.uses_base_unet}
        return list(models.values())

    def _bind_base_unet(self, model, base_name: str) -> None:
        """Controls built from the sampled model's UNet (Control-LoRA) get its weights as they are
        now: the sampler has loaded the model with its patches (LoRAs) applied, as the host's own
        ControlLora reads them."""
        controls = self._base_unet_models(self._run_units)
        if not controls:
            return
        unet = getattr(model, "diffusion_model", None)
        if unet is None:
            raise ControlNetError(f"{controls[0].label} is built from the base model's UNet weights, but "
                                  f"{base_name} has no ldm UNet (diffusion_model)")
        weights = unet.state_dict()
        for control in controls:
            control.use_base_unet(weights, base_name)

    @staticmethod
    def _window(x_noisy, transformer_options: dict):
        """The video frames this call covers, when the sampler runs a context window whose length
        matches the call's rows per cond/uncond chunk (a window left over from another call is ignored)."""
        window = window_from_options(transformer_options)
        chunks = len(transformer_options.get("cond_or_uncond") or [0])
        if window is None or len(window.indices) * chunks != x_noisy.shape[0]:
            return None
        return window

    def _keyframe_state(self, sigma):
        """Each entry's keyframe state at this sigma: a keyframe is reached when the sigma is no
        longer above its start's (the host's step-range rule); inside an interpolated segment the
        step's percent is found from the host's percent_to_sigma."""
        percents: dict[tuple[float, float], float] = {}

        def reached(start: float) -> bool:
            return not bool(sigma > self._keyframe_sigmas[start])

        def state(entry):
            keyframes = entry.resolved_keyframes
            if keyframes is None:
                return NEUTRAL
            index, percent = keyframes.current(reached), 0.0  # the percent matters only inside a ramp
            if 0 <= index < len(keyframes.items) - 1 and keyframes.items[index][0].interpolation != HOLD:
                segment = (keyframes.items[index][0].start, keyframes.items[index + 1][0].start)
                if segment not in percents:
                    percents[segment] = percent_of_sigma(sigma, self._percent_to_sigma, *segment)
                percent = percents[segment]
            return keyframes.state(percent, reached)

        return state

    def cleanup(self) -> None:
        for control in self._base_unet_models(self._run_units):
            control.use_base_unet(None)  # the ControlNet built for this run goes with it
        self._stack = None  # drops the cached per-image work with it
        self._run_units = []
        self._entry_ranges = {}
        self._keyframe_sigmas = {}
        self._percent_to_sigma = None
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
        # counted through get_models. Controls that build a model per run (Control-LoRA) add it.
        built = sum(control.run_memory() for control in self._base_unet_models(self.effective_units()))
        return super().inference_memory_requirements(dtype) + built
