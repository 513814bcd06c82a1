"""Reading checkpoint files safely.

`.safetensors` is read directly. `.pth` / `.ckpt` / `.bin` / `.pt` go through
`torch.load(weights_only=True)`, which refuses pickles that would run code. Every failure becomes
a CheckpointError naming the file, in our own words: torch's text for a refused pickle advises
re-running with `weights_only=False`, which would run the file's code, and is never passed on.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"ControlNet checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Training checkpoints nest the weights under 'state_dict' (Lightning) or 'model'."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return _strip_data_parallel(dict(inner))
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return _strip_data_parallel(tensors)
    raise CheckpointError(f"{path} holds no tensors: expected a state dict, found {type(obj).__name__}")


_DATA_PARALLEL_PREFIX = "module."


def _strip_data_parallel(state: dict) -> dict:
    """Weights saved from a torch DataParallel/DDP wrapper carry 'module.' before every key."""
    if state and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(_DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}
    return state


# Sentences of torch's error text that advise loading unsafely; never passed on.
_UNSAFE_ADVICE = re.compile(r"weights_only|trusted source|trust the source|safe_globals|arbitrary code", re.I)


def _why_torch_load_failed(exc: BaseException) -> str:
    """The reason torch.load(weights_only=True) failed, restated without torch's advice to load unsafely."""
    text = str(exc)
    refused_global = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and refused_global:
        return (f"was refused: it holds a Python object ({refused_global.group(1)}) that can only be loaded by "
                "running code from the file, which is unsafe, so nothing was run. Use a .safetensors version of it")
    if isinstance(exc, pickle.UnpicklingError):
        return ("was refused: it is not a plain PyTorch state dict (corrupt, not a checkpoint, or a pickle that "
                "needs code to load), so nothing was run")
    if isinstance(exc, EOFError) or "central directory" in text or "zip archive" in text:
        return "could not be read: it ends early or its zip archive is damaged (truncated or corrupt: download it again)"
    first = next((line for line in text.splitlines() if line.strip()), "")
    kept = " ".join(part for part in re.split(r"(?<=[.!?])\s+", first) if not _UNSAFE_ADVICE.search(part))
    return (f"could not be read as a PyTorch checkpoint (corrupt or truncated?): {type(exc).__name__}"
            + (f": {kept[:200]}" if kept else ""))


def read_state_dict(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, keys as stored (less a 'module.' prefix on every key)."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            return _strip_data_parallel(load_file(str(path), device=str(device)))
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled headers
            raise CheckpointError(f"{path} is not a readable .safetensors file (corrupt or truncated?): {exc}") from exc
    if suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location=device, weights_only=True, mmap=_is_zipfile(path))
        except Exception as exc:  # refused pickle, truncated zip, random bytes (KeyError, EOFError, ...)
            raise CheckpointError(f"{path} {_why_torch_load_failed(exc)}") from None  # torch's text is not passed on
        return _unwrap(obj, path)
    raise CheckpointError(f"{path}: unknown checkpoint extension {suffix!r}; expected one of "
                          f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}")


def read_tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key → (shape, dtype) without reading tensor data where the format allows (safetensors)."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES or _looks_like_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                out = {}
                for key in handle.keys():
                    tensor_slice = handle.get_slice(key)
                    out[key] = (tuple(tensor_slice.get_shape()), _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), torch.float32))
                return _strip_data_parallel(out)
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable .safetensors file (corrupt or truncated?): {exc}") from exc
    return {k: (tuple(v.shape), v.dtype) for k, v in read_state_dict(path).items()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length and then '{'."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _is_zipfile(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"
