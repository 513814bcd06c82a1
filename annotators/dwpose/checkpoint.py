"""Opening DWPose's two published ONNX files and checking that each holds the network it should.

- ``yolox_l.onnx``: the YOLOX-L COCO detector (used for its person boxes). One image input
  ``B×3×640×640`` (float, 0..255, no normalisation), one output ``B×8400×85``: per anchor of the
  stride 8/16/32 grids (80² + 40² + 20² = 8400), the raw box offsets (x, y, log w, log h), then
  the objectness and the 80 class scores, already through a sigmoid.
- ``dw-ll_ucoco_384.onnx``: the DWPose RTMPose-L whole-body model. One input ``B×3×384×288``
  (mean/std-normalised RGB), outputs ``simcc_x`` ``B×133×576`` and ``simcc_y`` ``B×133×768``: the
  133 COCO-WholeBody keypoints as 1-D classifications over x and y at twice the input resolution.

Both are read by onnxruntime, an optional dependency imported only here. The batch dimension may
be fixed (1) or dynamic; :class:`OnnxModel` runs a batch in one call when it is dynamic and one
item at a time otherwise. Nothing in an ONNX file is executed outside onnxruntime's operators.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..common import MissingDependencyError, MissingWeightsError
from ..common.checkpoint import CheckpointMismatchError

ANNOTATOR = "DWPose"
DETECTOR_WEIGHT_FILE = "yolox_l.onnx"
POSE_WEIGHT_FILE = "dw-ll_ucoco_384.onnx"
WEIGHT_SOURCE = "https://huggingface.co/yzd-v/DWPose"
DETECTOR_DESCRIPTION = f"the YOLOX person detector ({DETECTOR_WEIGHT_FILE})"
POSE_DESCRIPTION = f"the DWPose whole-body pose model ({POSE_WEIGHT_FILE})"

DETECTOR_INPUT_SIZE = (640, 640)  # (height, width) when the file leaves them dynamic
DETECTOR_STRIDES = (8, 16, 32)
COCO_CLASSES = 80
POSE_INPUT_SIZE = (384, 288)  # (height, width)
WHOLEBODY_KEYPOINTS = 133


def import_onnxruntime() -> Any:
    """The onnxruntime module, or :class:`MissingDependencyError` naming the package."""
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError(
            "onnxruntime", annotator=ANNOTATOR, install="pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from error
    return onnxruntime


def providers_for(device: Any, available: Sequence[str]) -> list[str]:
    """onnxruntime execution providers for a torch-style device: CUDA first for ``cuda``, else CPU."""
    if device is not None and str(device).startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _dim(value: Any) -> int | None:
    """A static dimension as int; None for a symbolic or unknown one."""
    return value if isinstance(value, int) and value > 0 else None


def _describe(entries: Sequence[Any]) -> str:
    return ", ".join(f"{entry.name} {list(entry.shape)}" for entry in entries) or "none"


@dataclass
class OnnxModel:
    """An onnxruntime session with its checked input size and output order."""

    session: Any
    path: Path
    input_name: str
    input_size: tuple[int, int]  # (height, width)
    output_names: tuple[str, ...]
    batched: bool  # the batch dimension is dynamic

    def run(self, batch: np.ndarray, max_batch: int = 16) -> list[np.ndarray]:
        """Outputs for a ``N×3×H×W`` float32 batch: one call per ``max_batch`` items, or per item."""
        step = max(1, max_batch) if self.batched else 1
        parts = [
            self.session.run(list(self.output_names), {self.input_name: np.ascontiguousarray(batch[start : start + step])})
            for start in range(0, len(batch), step)
        ]
        return [np.concatenate([part[index] for part in parts]) for index in range(len(self.output_names))]


def _open(path: str | Path, providers: Sequence[str] | None, device: Any) -> tuple[Any, Path]:
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(path.name, path.parent, annotator=ANNOTATOR, source=WEIGHT_SOURCE)
    ort = import_onnxruntime()
    chosen = list(providers) if providers else providers_for(device, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), providers=chosen)
    except Exception as error:  # not ONNX, truncated, unsupported operators ...
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise CheckpointMismatchError(
            f"{ANNOTATOR}: cannot read weight file '{path}' as an ONNX model: {type(error).__name__}: {first_line} "
            "(the file may be truncated or not an ONNX file)"
        ) from error
    return session, path


def _looks_like(inputs: Sequence[Any], outputs: Sequence[Any]) -> str | None:
    """Which of the two DWPose files a session's signature belongs to, if either."""
    names = {output.name for output in outputs}
    if {"simcc_x", "simcc_y"} <= names or (len(outputs) == 2 and all(len(o.shape) == 3 for o in outputs)):
        return POSE_DESCRIPTION
    if len(outputs) == 1 and len(outputs[0].shape) == 3 and _dim(outputs[0].shape[-1]) == 5 + COCO_CLASSES:
        return DETECTOR_DESCRIPTION
    return None


def _mismatch(path: Path, architecture: str, expected: str, inputs: Sequence[Any], outputs: Sequence[Any]) -> CheckpointMismatchError:
    message = (
        f"{ANNOTATOR}: weight file '{path}' does not hold {architecture}: expected {expected}, "
        f"found inputs {_describe(inputs)} and outputs {_describe(outputs)}."
    )
    looks_like = _looks_like(inputs, outputs)
    if looks_like and looks_like != architecture:
        message += f" The file looks like {looks_like}."
    return CheckpointMismatchError(message)


def _image_input(session: Any, default_size: tuple[int, int]) -> tuple[Any, tuple[int, int], bool] | None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or _dim(inputs[0].shape[1]) not in (3, None):
        return None
    batch, _channels, height, width = inputs[0].shape
    size = (_dim(height) or default_size[0], _dim(width) or default_size[1])
    return inputs[0], size, _dim(batch) is None


def load_person_detector(path: str | Path, *, providers: Sequence[str] | None = None, device: Any = None) -> OnnxModel:
    """Open and check ``yolox_l.onnx``: one ``B×3×H×W`` input, one ``B×anchors×85`` output."""
    session, path = _open(path, providers, device)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = "one image input [B, 3, 640, 640] and one output [B, 8400, 85] (YOLOX box offsets, objectness, 80 COCO classes)"
    image = _image_input(session, DETECTOR_INPUT_SIZE)
    if image is None or len(outputs) != 1 or len(outputs[0].shape) != 3:
        raise _mismatch(path, DETECTOR_DESCRIPTION, expected, inputs, outputs)
    entry, size, batched = image
    anchors = sum((size[0] // stride) * (size[1] // stride) for stride in DETECTOR_STRIDES)
    found_anchors, found_values = _dim(outputs[0].shape[1]), _dim(outputs[0].shape[2])
    if found_values not in (5 + COCO_CLASSES, None) or found_anchors not in (anchors, None):
        raise _mismatch(path, DETECTOR_DESCRIPTION, expected, inputs, outputs)
    return OnnxModel(session, path, entry.name, size, (outputs[0].name,), batched)


def load_pose_model(path: str | Path, *, providers: Sequence[str] | None = None, device: Any = None) -> OnnxModel:
    """Open and check ``dw-ll_ucoco_384.onnx``: one ``B×3×384×288`` input, ``simcc_x``/``simcc_y`` outputs."""
    session, path = _open(path, providers, device)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = (
        f"one image input [B, 3, 384, 288] and outputs simcc_x [B, {WHOLEBODY_KEYPOINTS}, 576] and "
        f"simcc_y [B, {WHOLEBODY_KEYPOINTS}, 768] (SimCC over the 133 COCO-WholeBody keypoints)"
    )
    image = _image_input(session, POSE_INPUT_SIZE)
    by_name = {output.name: output for output in outputs}
    if "simcc_x" in by_name and "simcc_y" in by_name:
        simcc = (by_name["simcc_x"], by_name["simcc_y"])
    elif len(outputs) == 2:
        simcc = (outputs[0], outputs[1])  # the reference reads them by position
    else:
        simcc = None
    if image is None or simcc is None or any(len(output.shape) != 3 for output in simcc):
        raise _mismatch(path, POSE_DESCRIPTION, expected, inputs, outputs)
    entry, (height, width), batched = image
    for output, side in zip(simcc, (width, height)):
        keypoints, bins = _dim(output.shape[1]), _dim(output.shape[2])
        if keypoints not in (WHOLEBODY_KEYPOINTS, None) or (bins is not None and bins != 2 * side):
            raise _mismatch(path, POSE_DESCRIPTION, expected, inputs, outputs)
    return OnnxModel(session, path, entry.name, (height, width), (simcc[0].name, simcc[1].name), batched)
