"""Reading a neural annotator's weight file and checking it against the architecture it is meant for.

Only safe formats are read: ``.safetensors``, or a PyTorch pickle through ``torch.load`` with
``weights_only=True`` (no code in the file is ever executed). Mismatches are reported with the
file, the expected architecture, missing / unexpected keys and shape differences, and, when the
keys belong to another known annotator, which one it looks like.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import nn

from .errors import AnnotatorInputError, MissingWeightsError

# A key that only one published annotator file has → a readable name for that file.
KNOWN_SIGNATURES = {
    "Mconv7_stage6_L1.weight": "the OpenPose body model (body_pose_model.pth)",
    "Mconv7_stage6.weight": "the OpenPose hand model (hand_pose_model.pth)",
    "block5.projection.weight": "the ControlNet HED model (ControlNetHED.pth)",
    "depth_head.scratch.output_conv2.0.weight": "a Depth Anything (V1/V2) model",
    "pretrained.model.patch_embed.backbone.stem.conv.weight": "the MiDaS DPT-Hybrid model (dpt_hybrid-midas-501f0c75.pt)",
    "seed_bin_regressor._net.0.weight": "a ZoeDepth model (ZoeD_M12_N.pt)",
    "depth_model.encoder_modules.encoder.conv1.weight": "the LeReS depth model (res101.pth)",
    "model.model.1.model.1.weight": "the LeReS++ merging network (latest_net_G.pth)",
    "encoder.original_model.conv_stem.weight": "the NormalBAE model (scannet.pt)",
    "input_blocks.0.0.weight": "a ControlNet / UNet checkpoint",
    "controlnet_cond_embedding.conv_in.weight": "a diffusers ControlNet",
    # Line and edge annotators (issue 11).
    "model4.1.weight": "a line-art generator (sk_model.pth / sk_model2.pth)",
    "model.model.1.model.1.weight": "the anime line-art U-Net (netG.pth)",
    "block23.conv3.weight": "the M-LSD line model (mlsd_large_512_fp32.pth)",
    "block4_4.conv2.weight": "the PiDiNet edge model (table5_pidinet.pth)",
    "block_cat.DWconv2.weight": "the TEED edge model (5_model.pth)",
}
# Keys that several published files share, told apart by the tensor's first dimension; checked first.
KNOWN_SHAPED_SIGNATURES = {
    ("Mconv7_stage6.weight", 71): "the OpenPose face model (facenet.pth)",
    ("backbone.blocks3.0.attn.qkv.weight", 960): "the UniFormer-S UperNet ADE20K segmentation model (upernet_global_small.pth)",
}

_SHOWN_KEYS = 5
_WRAPPER_KEYS = ("state_dict", "model", "depth_model", "module", "net")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class CheckpointMismatchError(AnnotatorInputError):
    """A weight file that is unreadable or does not hold the expected architecture's parameters."""


def resolve_weight_file(models_dir: str | Path, file_name: str, *, annotator: str, source: str | None = None) -> Path:
    """``models_dir / file_name`` if it exists, else :class:`MissingWeightsError` naming both."""
    path = Path(models_dir) / file_name
    if not path.is_file():
        raise MissingWeightsError(file_name, models_dir, annotator=annotator, source=source)
    return path


def read_state_dict(path: str | Path, *, annotator: str) -> dict[str, torch.Tensor]:
    """Load a flat ``name → tensor`` dict from ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin``.

    Unwraps the usual ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"depth_model": ...}`` containers and a DataParallel
    ``module.`` prefix. Raises :class:`MissingWeightsError` if the file does not exist and
    :class:`CheckpointMismatchError` if it cannot be read (truncated, not a checkpoint, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(path.name, path.parent, annotator=annotator)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, random bytes ...
        raise CheckpointMismatchError(
            f"{annotator}: cannot read weight file '{path}': expected a PyTorch state dict (.pth) or a "
            f".safetensors file; {describe_load_failure(exc)}"
        ) from None  # torch's own text advises turning the safe loader off: it must not reach the user

    for _ in range(2):  # nested containers, e.g. {"model": {"state_dict": ...}}
        if isinstance(state, Mapping):
            wrapper = next((key for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
            if wrapper is not None and not any(isinstance(value, torch.Tensor) for value in state.values()):
                state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(
            f"{annotator}: weight file '{path}': expected a dict of tensors, found {type(state).__name__}"
        )
    tensors = {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointMismatchError(
            f"{annotator}: weight file '{path}': expected a dict of tensors, found no tensors "
            f"(keys: {_preview(list(state))})"
        )
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


# Sentences of torch's error text that advise loading unsafely; never passed on.
_UNSAFE_ADVICE = re.compile(r"weights_only|trusted source|trust the source|safe_globals|arbitrary code", re.I)


def describe_load_failure(exc: BaseException) -> str:
    """Why a weight file could not be read, in our words.

    ``torch.load(weights_only=True)`` explains a refusal by suggesting ``weights_only=False``, which
    would run whatever code the file holds. That advice is never repeated: the reason is restated,
    and any other text from the error is kept only if it carries no such advice.
    """
    text = str(exc)
    refused_global = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and refused_global:
        return (f"it holds a Python object ({refused_global.group(1)}) that can only be loaded by running code "
                "from the file, so it was refused and nothing was run. Use a .safetensors version of the file")
    if isinstance(exc, pickle.UnpicklingError):
        return ("it is not a plain PyTorch state dict: it is corrupt, not a weight file, or a pickle that needs "
                "code to load (refused, nothing was run)")
    if isinstance(exc, EOFError) or "central directory" in text or "zip archive" in text:
        return "it ends early or its zip archive is damaged (the file is truncated or corrupt: download it again)"
    first = next((line for line in text.splitlines() if line.strip()), "")
    kept = " ".join(part for part in re.split(r"(?<=[.!?])\s+", first) if not _UNSAFE_ADVICE.search(part))
    detail = f" ({type(exc).__name__}: {kept[:200]})" if kept else f" ({type(exc).__name__})"
    return f"reading failed{detail}: the file may be truncated, corrupt or not a weight file"


def prefix_hint(found: Collection[str], expected: Collection[str]) -> str | None:
    """A sentence naming the key prefix when ``found`` and ``expected`` differ only by leading parts.

    E.g. a file saved from a wrapper module (``model0.conv1_1.weight`` for ``conv1_1.weight``), or one
    whose keys lack a prefix the architecture has. Keys are paired by their longest common dotted
    tail; the hint is given only if every missing key pairs with exactly one unexpected key.
    """
    found_set, expected_set = set(found), set(expected)
    missing = [key for key in expected if key not in found_set]
    unexpected = [key for key in found if key not in expected_set]
    if not missing or len(missing) != len(unexpected):
        return None
    by_tail: dict[str, list[str]] = {}
    for key in unexpected:
        parts = key.split(".")
        for start in range(len(parts)):
            by_tail.setdefault(".".join(parts[start:]), []).append(key)
    pairs: dict[str, tuple[str, str]] = {}  # found key -> (its leading part, the expected key's)
    weak = False  # some pair shares only a one-word tail ('norm'): trusted only if every prefix is the same
    for key in missing:
        parts = key.split(".")
        for start in range(len(parts)):
            tail = ".".join(parts[start:])
            candidates = by_tail.get(tail)
            if candidates:
                break
        else:
            return None
        if len(candidates) != 1 or candidates[0] in pairs:
            return None
        weak = weak or ("." not in tail and tail not in (key, candidates[0]))
        pairs[candidates[0]] = (candidates[0][: -len(tail)], key[: len(key) - len(tail)])
    if len(pairs) != len(unexpected):
        return None
    leads = sorted(set(pairs.values()))
    if len(leads) > 1 and weak:
        return None
    example_found, (found_lead, expected_lead) = next(iter(pairs.items()))
    example = f"e.g. {example_found!r} for {expected_lead + example_found[len(found_lead):]!r}"
    if len(leads) > 1:
        shown = ", ".join(repr(lead) for lead, _ in leads[:_SHOWN_KEYS]) + (f", ... ({len(leads)} in all)" if len(leads) > _SHOWN_KEYS else "")
        return (f"Only the key prefixes differ: the file's keys carry other leading parts ({shown}; {example}). "
                "Rename the keys to the expected names (or re-save the module's weights without its wrapper).")
    if found_lead and not expected_lead:
        what = f"every key in the file has the extra prefix {found_lead!r}"
    elif expected_lead and not found_lead:
        what = f"the file's keys lack the prefix {expected_lead!r}"
    else:
        what = f"the file's keys start with {found_lead!r} where {expected_lead!r} is expected"
    return f"Only the key prefix differs: {what} ({example}). Rename the keys to the expected names."


def identify(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the known published model whose signature key ``state`` has, if any."""
    for (key, rows), description in KNOWN_SHAPED_SIGNATURES.items():
        tensor = state.get(key)
        if tensor is not None and tensor.ndim > 0 and tensor.shape[0] == rows:
            return description
    for key, description in KNOWN_SIGNATURES.items():
        if key in state or any(name.endswith("." + key) for name in state):
            return description
    return None


def require_tensor(
    state: Mapping[str, torch.Tensor], key: str, *, ndim: int, path: str | Path, annotator: str, architecture: str
) -> torch.Tensor:
    """``state[key]`` if it is an ``ndim``-D tensor, else :class:`CheckpointMismatchError` saying what the file looks like.

    Loaders read a few sizes from the file before the full key check; this names the file when even
    those keys are absent (a file of another network).
    """
    tensor = state.get(key)
    if tensor is not None and tensor.ndim == ndim:
        return tensor
    found = "missing" if tensor is None else f"of shape {list(tensor.shape)}"
    message = (
        f"{annotator}: weight file '{path}' does not hold {architecture}: key {key!r} ({ndim}-D) is {found}; "
        f"found keys like {_preview(sorted(state))}."
    )
    looks_like = identify(state)
    if looks_like and looks_like not in architecture:
        message += f" The file looks like {looks_like}."
    raise CheckpointMismatchError(message)


def count_indexed(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many ``prefix{i}.`` entries (i = 0, 1, ...) the keys hold: the depth of a stored ModuleList."""
    indices = {key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)}
    return len({int(index) for index in indices if index.isdigit()})


def _preview(keys: list[str]) -> str:
    shown = ", ".join(repr(key) for key in keys[:_SHOWN_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    path: str | Path,
    annotator: str,
    architecture: str,
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly the ``expected`` keys and shapes."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shapes = [
        (key, tuple(expected[key]), tuple(state[key].shape))
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key])
    ]
    if not (missing or unexpected or wrong_shapes):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} expected keys are missing ({_preview(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} keys are not part of it ({_preview(unexpected)})")
    if wrong_shapes:
        shown = "; ".join(
            f"{key!r} expected {list(want)} found {list(found)}" for key, want, found in wrong_shapes[:_SHOWN_KEYS]
        )
        more = f" ... ({len(wrong_shapes)} in all)" if len(wrong_shapes) > _SHOWN_KEYS else ""
        problems.append(f"shapes differ: {shown}{more}")
    message = f"{annotator}: weight file '{path}' does not hold {architecture}: " + "; ".join(problems) + "."
    hint = prefix_hint(list(state), list(expected)) if not wrong_shapes else None
    looks_like = identify(state)
    if hint:
        message += " " + hint
    elif looks_like and looks_like not in architecture:
        message += f" The file looks like {looks_like}."
    raise CheckpointMismatchError(message)


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key → shape table of a module's state dict (works on the meta device)."""
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def with_batchnorm_counters(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """``state`` plus a zero ``num_batches_tracked`` for every batch norm the file stores without one.

    The counter only matters in training; files saved before PyTorch 0.4.1 (or converted from
    other frameworks) do not have it, and ``load_state_dict`` accepts them. Nothing else is added.
    """
    completed = dict(state)
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in completed:
            if key[: -len("num_batches_tracked")] + "running_mean" in completed:
                completed[key] = torch.tensor(0, dtype=torch.long)
    return completed


def build_and_load(
    factory: Callable[[], ModuleT],
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = torch.float32,
) -> ModuleT:
    """Build a module on the meta device and adopt ``state``'s tensors (no random init, no copy).

    ``state`` must already be checked with :func:`check_state_dict`.
    """
    with torch.device("meta"):
        model = factory()
    model.load_state_dict(dict(state), strict=True, assign=True)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


ConfigT = TypeVar("ConfigT")


def load_checked(
    path: str | Path,
    factory: Callable[[], ModuleT] | None = None,
    *,
    annotator: str,
    architecture: str,
    read_config: Callable[[dict[str, torch.Tensor], str | Path], ConfigT] | None = None,
    build: Callable[[ConfigT], ModuleT] | None = None,
    complete: Callable[[dict[str, torch.Tensor], Mapping[str, tuple[int, ...]], ConfigT], dict[str, torch.Tensor]] | None = None,
) -> ModuleT:
    """Read ``path``, check every key and shape against the network it should hold, and load it:
    float32, eval mode, CPU. Errors name the file and what it looks like (:func:`check_state_dict`).

    The network is ``factory()`` for a fixed architecture, or ``build(read_config(state, path))`` for
    one sized from the file. Batch-norm counters are optional; ``complete`` may add other entries a
    valid file can lack."""
    state = read_state_dict(path, annotator=annotator)
    if factory is not None:
        config, build = None, (lambda _: factory())
    elif read_config is None or build is None:
        raise TypeError("load_checked needs `factory`, or `read_config` and `build`")
    else:
        config = read_config(state, path)
    with torch.device("meta"):
        expected = expected_shapes(build(config))
    state = with_batchnorm_counters(state, expected)
    if complete is not None:
        state = complete(state, expected, config)
    check_state_dict(state, expected, path=path, annotator=annotator, architecture=architecture)
    return build_and_load(lambda: build(config), state)


DetectorT = TypeVar("DetectorT", bound="SingleModelDetector")


class SingleModelDetector:
    """Plumbing shared by detectors that wrap one torch module loaded from one weight file.

    Subclasses set ``weight_file``, ``annotator`` and ``weight_source`` and implement
    :meth:`load_model`; they get ``from_file``, ``from_folder``, ``to`` and ``device``/``dtype``.
    """

    weight_file: str = ""
    annotator: str = ""
    weight_source: str | None = None
    # Frames per forward pass on an accelerator. On the CPU frames go one at a time: a convolution
    # there gains nothing from a batch, and a batch's activations fall out of the caches (measured
    # 10-35 % slower per frame at 512² in chunks of 4).
    accelerator_batch_size: int = 8

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @classmethod
    def load_model(cls, path: str | Path) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_file(cls: type[DetectorT], path: str | Path) -> DetectorT:
        return cls(cls.load_model(path))

    @classmethod
    def from_folder(cls: type[DetectorT], models_dir: str | Path, file_name: str | None = None) -> DetectorT:
        """Load ``file_name`` (default: the published file name) from ``models_dir``; never downloads."""
        path = resolve_weight_file(
            models_dir, file_name or cls.weight_file, annotator=cls.annotator, source=cls.weight_source
        )
        return cls.from_file(path)

    def to(self: DetectorT, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DetectorT:
        self.model.to(device=device, dtype=dtype)
        return self

    def forward_in_chunks(
        self, frames: np.ndarray, forward: Callable[[torch.Tensor], torch.Tensor], batch_size: int
    ) -> np.ndarray:
        """``forward`` over ``frames`` (a B×... uint8 array) ``batch_size`` at a time, on the model's
        device; the float32 results are concatenated on the CPU."""
        outputs = []
        for start in range(0, len(frames), max(1, batch_size)):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size])).to(self.device)
            outputs.append(forward(chunk).float().cpu().numpy())
        return np.concatenate(outputs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward_batches(
        self, padded: np.ndarray, forward: Callable[[torch.Tensor], torch.Tensor], batch_size: int | None = None
    ) -> np.ndarray:
        """``forward`` over ``B×H×W×3`` uint8 frames in chunks of ``batch_size``, outputs concatenated.

        ``batch_size`` None: 1 on the CPU, ``accelerator_batch_size`` on other devices.

        Each chunk reaches ``forward`` as a contiguous ``b×3×H×W`` tensor of 0..255 values in the
        model's dtype, on its device; what it returns comes back as float32 numpy. (Contiguous, not
        channels-last: the reference annotators feed that layout, and convolutions pick their
        algorithm, hence their rounding, by it.)
        """
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else self.accelerator_batch_size
        outputs = []
        for start in range(0, len(padded), max(1, batch_size)):
            chunk = torch.from_numpy(np.ascontiguousarray(padded[start : start + batch_size])).to(self.device)
            rgb = chunk.permute(0, 3, 1, 2).to(self.dtype).contiguous()
            outputs.append(forward(rgb).float().cpu().numpy())
        return np.concatenate(outputs)
