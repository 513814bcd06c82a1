"""nodes/preprocessor_nodes.py without a host, against the stand-in modules of tests/comfy_stub.py."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_stub import import_preprocessor_nodes


@pytest.fixture
def host(monkeypatch, tmp_path):
    nodes, registered, progress = import_preprocessor_nodes(monkeypatch, tmp_path)
    return types.SimpleNamespace(nodes=nodes, tmp=tmp_path, progress=progress, registered=registered)


def test_every_node_documents_its_inputs(host):
    mappings = host.nodes.NODE_CLASS_MAPPINGS
    assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS["ControlNetPack_Preprocessor"] == "Preprocessor"
    assert set(mappings) == set(host.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    for key, cls in mappings.items():
        assert key.startswith("ControlNetPack_") and cls.DESCRIPTION and cls.FUNCTION == "preprocess"
        for section in cls.INPUT_TYPES().values():
            for name, declaration in section.items():
                options = declaration[1]
                assert options.get("tooltip"), (key, name)
                if declaration[0] in ("INT", "FLOAT"):
                    assert options["min"] <= options["default"] <= options["max"], (key, name)
                if isinstance(declaration[0], list) or declaration[0] == "BOOLEAN":
                    assert "default" in options, (key, name)
    assert host.registered["annotators"] == [str(host.tmp / "models" / "annotators")]


def test_generic_preprocessor_returns_an_aligned_map_a_preview_and_progress(host):
    image = torch.zeros(3, 45, 71, 3)
    image[:, 10:30, 20:50] = 1.0
    returned = host.nodes.Preprocessor().preprocess(image, "canny", 512)
    control_map, pose = returned["result"]
    assert control_map.shape == (3, 45, 71, 3) and control_map.dtype == torch.float32
    assert pose == []
    assert control_map[0, 10:30, 18:22].max() > 0 and control_map[0, 15:25, 25:45].max() == 0
    previews = returned["ui"]["images"]
    assert len(previews) == 3 and all(p["type"] == "temp" for p in previews)
    assert all((host.tmp / "temp" / p["filename"]).is_file() for p in previews)
    assert host.progress[-1] == (3, 3)


def test_dedicated_node_parameters_reach_the_annotator(host):
    node = host.nodes.NODE_CLASS_MAPPINGS["ControlNetPack_BinaryPreprocessor"]()
    image = torch.full((1, 20, 30, 3), 0.5)
    white = node.preprocess(image=image, resolution=64, threshold=100, invert=False)["result"][0]
    black = node.preprocess(image=image, resolution=64, threshold=200, invert=False)["result"][0]
    assert (white == 1.0).all() and (black == 0.0).all()


def test_inpaint_node_keeps_minus_one_and_needs_a_mask(host):
    node = host.nodes.NODE_CLASS_MAPPINGS["ControlNetPack_InpaintPreprocessor"]()
    mask = torch.zeros(1, 20, 30)
    mask[:, 5:10, 5:10] = 1
    hint = node.preprocess(image=torch.rand(2, 20, 30, 3), mask=mask, masked_value="-1")["result"][0]
    assert (hint[:, 5:10, 5:10] == -1).all() and (hint[:, 12:] >= 0).all()
    from pack_under_test.annotators.common import AnnotatorInputError

    with pytest.raises(AnnotatorInputError, match="mask"):
        host.nodes.Preprocessor().preprocess(torch.rand(1, 20, 30, 3), "inpaint", 512)


@pytest.mark.parametrize("preprocessor", ["openpose", "depth_anything_v2", "hed"])
def test_missing_neural_weights_name_the_file_and_the_models_folder(host, preprocessor):
    from pack_under_test.annotators.common import MissingWeightsError

    with pytest.raises(MissingWeightsError) as info:
        host.nodes.Preprocessor().preprocess(torch.rand(1, 20, 30, 3), preprocessor, 512)
    spec = host.nodes.REGISTRY[preprocessor]
    assert spec.weights[0].file_name in str(info.value)
    assert str(Path(host.tmp) / "models" / "annotators") in str(info.value)


def test_line_annotators_have_nodes_and_aliases_share_them(host):
    """controlnet_aux's ids are in the generic dropdown; ids with parameters get a node of their own,
    aliases (an id with parameters fixed) do not."""
    mappings = host.nodes.NODE_CLASS_MAPPINGS
    choices = host.nodes.Preprocessor.INPUT_TYPES()["required"]["preprocessor"][0]
    for name in ("lineart_realistic", "lineart_coarse", "lineart_anime", "mlsd", "softedge_pidinet", "scribble_pidinet",
                 "softedge_pidsafe", "scribble_pidsafe", "scribble_hed", "softedge_hed", "softedge_hedsafe",
                 "scribble_hedsafe", "teed", "hed", "canny", "shuffle"):
        assert name in choices
    mlsd = mappings["ControlNetPack_MlsdPreprocessor"].INPUT_TYPES()["required"]
    assert list(mlsd) == ["image", "resolution", "score_threshold", "distance_threshold"]
    assert mlsd["score_threshold"][1]["default"] == 0.1 and mlsd["distance_threshold"][1]["default"] == 0.1
    assert list(mappings["ControlNetPack_TeedPreprocessor"].INPUT_TYPES()["required"]) == ["image", "resolution", "safe_steps"]
    assert list(mappings["ControlNetPack_ScribblePidinetPreprocessor"].INPUT_TYPES()["required"])[-1] == "safe"
    assert not any(key.startswith(("ControlNetPack_SoftedgeHed", "ControlNetPack_ScribblePidsafe")) for key in mappings)


def test_an_alias_runs_from_the_dropdown_with_weights_from_the_models_folder(host):
    from pack_under_test.annotators.pidinet import PiDiNetModel

    folder = Path(host.registered["annotators"][0])
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = {"module." + key: value for key, value in PiDiNetModel().state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state}, folder / "table5_pidinet.pth")
    returned = host.nodes.Preprocessor().preprocess(torch.rand(2, 30, 40, 3), "scribble_pidsafe", 64)
    control_map, pose = returned["result"]
    assert control_map.shape == (2, 30, 40, 3) and pose == []
    assert set(torch.unique(control_map).tolist()) <= {0.0, 1.0}
