"""nodes/preprocessor_nodes.py without a host, against the stand-in modules of tests/comfy_stub.py."""
from __future__ import annotations

import subprocess
import sys
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
    assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS["ControlNetPack_Preprocessor"] == "Preprocessor (ControlNet Pack)"
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


@pytest.mark.parametrize("preprocessor", ["openpose", "openpose_face", "openpose_full", "dwpose", "depth_anything_v2", "hed"])
def test_missing_neural_weights_name_the_file_and_the_models_folder(host, preprocessor):
    from pack_under_test.annotators.common import MissingWeightsError

    with pytest.raises(MissingWeightsError) as info:
        host.nodes.Preprocessor().preprocess(torch.rand(1, 20, 30, 3), preprocessor, 512)
    spec = host.nodes.REGISTRY[preprocessor]
    assert spec.weights[0].file_name in str(info.value)
    assert str(Path(host.tmp) / "models" / "annotators") in str(info.value)


# ---- display names, Depth Anything V2, the host's model manager, bundled samples ------------------

# Display names of nodes that do similar things: the host's and comfyui_controlnet_aux's (read from
# their node mappings). The node search must never show two identical names.
OTHER_PACKS_NAMES = {
    "Canny", "Load Image", "Apply ControlNet", "Load ControlNet Model",  # the host
    "AIO Aux Preprocessor", "Canny Edge", "Binary Lines", "Scribble Lines", "Scribble XDoG Lines", "M-LSD Lines",
    "Standard Lineart", "Color Pallete", "Content Shuffle", "Tile", "Inpaint Preprocessor", "OpenPose Pose",
    "Depth Anything V2 - Relative", "HED Soft-Edge Lines", "Render Pose JSON (Human)", "MiDaS Normal Map",
    "BAE Normal Map", "Semantic Segmentor (legacy, alias for UniFormer)",
}


def test_display_names_are_unique_and_tell_the_pack_apart(host):
    names = list(host.nodes.NODE_DISPLAY_NAME_MAPPINGS.values())
    assert len(names) == len(set(names))
    for name in names:
        assert name.endswith(" (ControlNet Pack)"), name
        assert name not in OTHER_PACKS_NAMES


def test_every_annotator_has_its_own_node_including_depth_anything_v2(host):
    for name, spec in host.nodes.REGISTRY.items():
        key = f"ControlNetPack_{name.title().replace('_', '').replace('+', 'Plus')}Preprocessor"  # keys stay URL-safe
        assert (key in host.nodes.NODE_CLASS_MAPPINGS) == (spec.alias_of is None), name  # aliases share their base's
    depth = host.nodes.NODE_CLASS_MAPPINGS["ControlNetPack_DepthAnythingV2Preprocessor"]
    assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS["ControlNetPack_DepthAnythingV2Preprocessor"] == \
        "Depth Anything V2 Preprocessor (ControlNet Pack)"
    resolution = depth.INPUT_TYPES()["required"]["resolution"][1]
    assert resolution["default"] == 518 and resolution["min"] == 0  # 0 = the input's own size
    assert "depth_anything_v2_vits.pth" in depth.DESCRIPTION
    from pack_under_test.annotators.common import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="depth_anything_v2_vits.pth"):
        depth().preprocess(image=torch.rand(1, 20, 30, 3), resolution=518)


def test_resolution_0_reaches_the_annotator_as_the_inputs_own_size(host):
    node = host.nodes.NODE_CLASS_MAPPINGS["ControlNetPack_CannyPreprocessor"]()
    image = torch.zeros(1, 70, 90, 3)
    image[:, 20:50, 30:60] = 1.0
    own = node.preprocess(image=image, resolution=0, low_threshold=100, high_threshold=200, l2_gradient=False)
    same = node.preprocess(image=image, resolution=70, low_threshold=100, high_threshold=200, l2_gradient=False)
    assert torch.equal(own["result"][0], same["result"][0])


@pytest.fixture
def hed_weights(host):
    from pack_under_test.annotators.hed import WEIGHT_FILE, HEDModel

    folder = host.tmp / "models" / "annotators"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(HEDModel().state_dict(), folder / WEIGHT_FILE)
    return folder


def test_neural_models_are_handed_to_the_hosts_model_manager(host, hed_weights, monkeypatch):
    """The HED network goes into a ModelPatcher that the host loads (load_models_gpu, full load) before
    the network runs; the annotator then runs where the host put it (device None), and a second run
    reuses the same patcher, so the host tracks one model and can offload it."""
    from pack_under_test.annotators import neural
    from pack_under_test.annotators.hed import HEDModel

    manager = sys.modules["comfy.model_management"]
    seen_loads_at_forward, devices_asked = [], []
    forward = HEDModel.edge_probability
    monkeypatch.setattr(HEDModel, "edge_probability",
                        lambda self, x: (seen_loads_at_forward.append(len(manager.load_requests)), forward(self, x))[1])
    load_detector = neural.load_detector
    monkeypatch.setattr(neural, "load_detector",
                        lambda *args: (devices_asked.append(args[3] if len(args) > 3 else None), load_detector(*args))[1])
    neural.clear_detector_cache()
    node = host.nodes.NODE_CLASS_MAPPINGS["ControlNetPack_HedPreprocessor"]()
    for _ in range(2):
        edges = node.preprocess(image=torch.rand(1, 40, 50, 3), resolution=64, safe=False)["result"][0]
        assert edges.shape == (1, 40, 50, 3)
    assert seen_loads_at_forward == [1, 2]  # the host placed the model before each forward
    assert set(devices_asked) == {None}  # the annotator was never told to move the model itself
    (first, full_1), (second, full_2) = manager.load_requests
    assert first == second and len(first) == 1 and full_1 and full_2
    patcher = first[0]
    detector = neural.detector_for("hed", str(hed_weights))
    assert {id(p) for p in patcher.model.parameters()} == {id(p) for p in detector.model.parameters()}
    assert patcher.load_device == manager.get_torch_device() and patcher.offload_device == manager.unet_offload_device()
    neural.clear_detector_cache()


def test_annotators_package_never_imports_comfy(tmp_path):
    """The node layer manages devices; annotators/ itself must stay importable without the host."""
    code = ("import sys, numpy as np\n"
            "import annotators, annotators.neural, annotators.registry\n"
            "annotators.run_annotator('canny', np.zeros((8, 8, 3), np.uint8))\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] in ('comfy', 'folder_paths')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_sample_nodes_load_the_bundled_photo_and_pose(host):
    import importlib

    from PIL import Image

    samples = importlib.import_module("pack_under_test.nodes.sample_nodes")
    folder = Path(__file__).resolve().parents[1] / "annotators" / "samples"
    image_node, pose_node = samples.LoadSampleImage(), samples.LoadSamplePose()
    assert image_node.INPUT_TYPES()["required"]["sample"][0] == ["astronaut.png", "chelsea.png", "coffee.png"]
    (photo,) = image_node.load("coffee.png")
    with Image.open(folder / "coffee.png") as expected:
        assert photo.shape == (1, expected.height, expected.width, 3) and photo.dtype == torch.float32
        assert torch.equal(photo[0], torch.from_numpy(np.asarray(expected.convert("RGB"), np.float32) / 255))
    (pose,) = pose_node.load("astronaut_pose.json")
    assert len(pose) == 1 and pose[0]["canvas_width"] == 512 and len(pose[0]["people"]) == 1
    render = host.nodes.NODE_CLASS_MAPPINGS["ControlNetPack_PoseRenderPreprocessor"]()
    drawn = render.preprocess(pose_keypoint=pose, draw_body=True, draw_hands=True, draw_face=True)["result"][0]
    assert drawn.shape == (1, 512, 512, 3)
    nose_x, nose_y = pose[0]["people"][0]["pose_keypoints_2d"][:2]
    nose_x, nose_y = (nose_x * 512, nose_y * 512) if nose_x <= 1 else (nose_x, nose_y)
    assert drawn[0, int(nose_y), int(nose_x)].max() > 0  # a joint is drawn where the file puts it
    from pack_under_test.annotators.common import AnnotatorInputError

    for bad in ("../README.md", "/etc/passwd", "missing.png"):
        with pytest.raises(AnnotatorInputError, match="bundled files"):
            image_node.load(bad)
    with pytest.raises(AnnotatorInputError, match="bundled files"):
        pose_node.load("../../pyproject.toml")


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
