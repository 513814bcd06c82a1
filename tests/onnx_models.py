"""Tiny ONNX stand-ins for DWPose's two published files, built with the onnx package's helper API in
the published input/output names and shapes (used by tests/test_dwpose.py and the benchmark).

- ``constant_detector``: a 'YOLOX' (``images`` [B, 3, 640, 640] → ``output`` [B, 8400, 85]) that
  answers with a fixed raw output for any image.
- ``dot_pose_model``: a 'RTMPose' (``input`` [B, 3, 384, 288] → ``simcc_x`` [B, 133, 576],
  ``simcc_y`` [B, 133, 768]) whose every keypoint is where the red channel is brightest.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ANCHORS = 80 * 80 + 40 * 40 + 20 * 20  # 8400


def save_model(path, nodes, inputs, outputs, initializers=()) -> None:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what every onnxruntime since 1.10 reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def constant_detector(path, raw: np.ndarray, batch: int | str = 1) -> None:
    """A 'YOLOX' whose output is ``raw`` (8400×85) for any image: images [B, 3, 640, 640] → output [B, 8400, 85]."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 640, 640])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, ANCHORS, 85])
    nodes = [
        # 0 × (sum of the image), shaped B×1×1, keeps the output's batch tied to the input's.
        helper.make_node("ReduceSum", ["images", "all_axes"], ["total"], keepdims=1),
        helper.make_node("Reshape", ["total", "b11"], ["total_b11"]),
        helper.make_node("Mul", ["total_b11", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "table"], ["output"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "all_axes"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "b11"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        numpy_helper.from_array(raw[None].astype(np.float32), "table"),
    ]
    save_model(path, nodes, [images], [output], initializers)


def dot_pose_model(path, batch: int | str = "batch", names=("simcc_x", "simcc_y")) -> None:
    """A 'RTMPose' whose SimCC peaks are where the red channel is brightest: input [B, 3, 384, 288] →
    simcc_x [B, 133, 576], simcc_y [B, 133, 768]; bins 2i and 2i+1 both hold pixel i's value."""
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 384, 288])
    outputs = [
        helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [batch, 133, 576]),
        helper.make_tensor_value_info(names[1], TensorProto.FLOAT, [batch, 133, 768]),
    ]
    nodes = [helper.make_node("Slice", ["input", "zero1", "one1", "one1"], ["red"])]  # channel 0: B×1×384×288
    for name, reduce_axis, length in ((names[0], 2, 288), (names[1], 3, 384)):
        nodes += [
            helper.make_node("ReduceMax", ["red"], [f"{name}_profile"], axes=[reduce_axis], keepdims=0),  # B×1×L
            helper.make_node("Unsqueeze", [f"{name}_profile", "minus1"], [f"{name}_column"]),  # B×1×L×1
            helper.make_node("Concat", [f"{name}_column", f"{name}_column"], [f"{name}_pairs"], axis=3),  # B×1×L×2
            helper.make_node("Reshape", [f"{name}_pairs", f"{name}_shape"], [f"{name}_bins"]),  # B×1×2L
            helper.make_node("Expand", [f"{name}_bins", "keypoints"], [name]),  # B×133×2L
        ]
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([1], np.int64), "one1"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.array([1, 133, 1], np.int64), "keypoints"),
        numpy_helper.from_array(np.array([0, 1, 576], np.int64), f"{names[0]}_shape"),
        numpy_helper.from_array(np.array([0, 1, 768], np.int64), f"{names[1]}_shape"),
    ]
    save_model(path, nodes, [image], outputs, initializers)


def raw_anchor(raw: np.ndarray, stride: int, gx: int, gy: int, offsets, objectness: float, classes: dict) -> None:
    """Write one anchor of the 640×640 YOLOX output: raw (dx, dy, log w, log h), objectness, class scores."""
    first = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}[stride]
    row = raw[first + gy * (640 // stride) + gx]
    row[:4] = offsets
    row[4] = objectness
    for cls, score in classes.items():
        row[5 + cls] = score
