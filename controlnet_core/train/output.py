"""Writing training outputs: checked before training starts, written atomically at the end.

A file is written to a hidden temporary name in the destination folder and renamed into place,
so an error (or an interrupt) never leaves a partial file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ._core import InputError

OUTPUT_SUFFIX = ".safetensors"


class OutputError(InputError):
    """An output path that cannot be written."""


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """The output file as a Path, after proving its folder takes a new file. Nothing is left behind."""
    path = Path(path).expanduser()
    if path.suffix.lower() != OUTPUT_SUFFIX:
        raise OutputError(f"output {path}: expected a {OUTPUT_SUFFIX} file name, found suffix {path.suffix!r}")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name ending in {OUTPUT_SUFFIX}")
    if path.exists() and not overwrite:
        raise OutputError(f"output {path} already exists; choose another name or allow overwriting")
    folder = path.parent
    if not folder.exists():
        raise OutputError(f"output folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True):
            pass
    except OSError as exc:
        raise OutputError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes the file private; outputs get the usual mode
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, dtype: torch.dtype | None,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Contiguous CPU copies (floating tensors in `dtype`), written atomically."""
    from safetensors.torch import save_file

    prepared = {}
    for key, value in tensors.items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        prepared[key] = value.to("cpu").contiguous()
    with atomic_path(path) as temporary:
        save_file(prepared, str(temporary), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return Path(path)
