"""The depth and normal annotators through the registry: ids, published file names, runs with the real
loaders on small files of the published layouts, uint8 maps at the input size, nodes and the CLI."""
from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from annotators import MissingWeightsError, annotator_names, get_spec, run_annotator
from annotators.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config, DepthAnythingV2Model
from annotators.depth_anything_v2.checkpoint import config_from_state_dict as dav2_config
from annotators.leres import MergeUNet
from annotators.neural import _CACHE, clear_detector_cache
from comfy_stub import import_preprocessor_nodes
from test_leres import TINY as LERES_TINY
from test_leres import TINY_MERGE
from test_leres import random_model as leres_model
from test_midas import TINY as MIDAS_TINY
from test_midas import random_model as midas_model
from test_normalbae import TINY as BAE_TINY
from test_normalbae import random_model as bae_model
from test_zoe import TINY as ZOE_TINY
from test_zoe import random_model as zoe_model

PUBLISHED_FILES = {
    "depth_midas": ["dpt_hybrid-midas-501f0c75.pt"],
    "normal_midas": ["dpt_hybrid-midas-501f0c75.pt"],
    "depth_zoe": ["ZoeD_M12_N.pt"],
    "depth_anything_v2_vitb": ["depth_anything_v2_vitb.pth"],
    "depth_anything_v2_vitl": ["depth_anything_v2_vitl.pth"],
    "normal_bae": ["scannet.pt"],
    "depth_leres": ["res101.pth"],
    "depth_leres++": ["res101.pth", "latest_net_G.pth"],
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    torch.save(midas_model(MIDAS_TINY).state_dict(), folder / "dpt_hybrid-midas-501f0c75.pt")
    torch.save({"model": bae_model(BAE_TINY).state_dict()}, folder / "scannet.pt")
    torch.save({"depth_model": leres_model(LERES_TINY).state_dict()}, folder / "res101.pth")
    torch.manual_seed(0)
    torch.save(MergeUNet(TINY_MERGE).state_dict(), folder / "latest_net_G.pth")
    # A (small) Depth Anything V2 file under the base model's name: the id must read that file.
    torch.save(DepthAnythingV2.random(seed=1).model.state_dict(), folder / "depth_anything_v2_vitb.pth")
    yield folder
    clear_detector_cache()


def test_ids_and_published_file_names_are_registered():
    for name, files in PUBLISHED_FILES.items():
        assert name in annotator_names()
        spec = get_spec(name)
        assert [w.file_name for w in spec.weights] == files
        assert all(w.source.startswith("https://huggingface.co/") for w in spec.weights)


@pytest.mark.parametrize("name", ["depth_midas", "normal_midas", "normal_bae", "depth_anything_v2_vitb", "depth_leres"])
def test_runs_by_name_on_files_of_the_published_layout(name, models_dir):
    frames = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    resolution = 70 if name.startswith("depth_anything") else 64
    result = run_annotator(name, frames, resolution=resolution, models_dir=str(models_dir))
    assert result.images.shape == (2, 37, 53, 3) and result.images.dtype == np.uint8
    if name.startswith("depth"):  # gray, normalised per frame (LeReS at detection size, as the reference)
        assert (result.images[..., 0] == result.images[..., 2]).all()
        for frame in result.images[..., 0].astype(int):
            assert frame.max() - frame.min() >= 200


def test_normal_midas_parameters_reach_the_map(models_dir):
    frames = np.random.default_rng(1).integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)
    # bg_threshold 1: everything is background, so every pixel faces the camera: (z, y, x) = (255, 128, 128).
    flat = run_annotator("normal_midas", frames, resolution=64, models_dir=str(models_dir), bg_threshold=1.0).images
    facing = (flat == np.array([255, 128, 128], np.uint8)).all(axis=-1)
    assert facing.mean() > 0.9  # all but the pixels around the nearest one, which is not below the threshold
    steep = run_annotator("normal_midas", frames, resolution=64, models_dir=str(models_dir), a=0.01, bg_threshold=0.0).images
    assert (steep[..., 0] < 200).mean() > 0.5  # a small z lets the slopes dominate


def test_zoe_by_name_with_its_gamma_parameter(tmp_path):
    # The loaded network would resize towards 384×512; a detector with a small target is put in the
    # cache the registry reads (same key as load_detector's) to keep the test fast.
    from annotators.zoe import ZoeDetector

    folder = str(tmp_path.resolve())
    _CACHE[("zoe.ZoeDetector:", folder, "None")] = ZoeDetector(zoe_model(replace(ZOE_TINY, process_size=(64, 64))).double())
    try:
        # Short side = resolution: the map is made at the input's size, so no resize blurs the comparison.
        frames = np.random.default_rng(2).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
        plain = run_annotator("depth_zoe", frames, resolution=64, models_dir=folder).images
        gamma = run_annotator("depth_zoe", frames, resolution=64, models_dir=folder, gamma_corrected=True).images
        assert plain.shape == gamma.shape == (2, 64, 80, 3)
        values = plain[..., 0].astype(np.float64) / 255
        expected = np.clip(np.rint(values**2.2 * 255), 0, 255)
        assert np.abs(gamma[..., 0] - expected).max() <= 2  # the plain map was rounded to 8 bits first
    finally:
        clear_detector_cache()


def test_leres_thresholds_and_the_boosted_variant_by_name(models_dir):
    # 64×64 at resolution 64: the map is made at the input's size, so no resize blurs the threshold.
    frames = np.random.default_rng(3).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    plain = run_annotator("depth_leres", frames, resolution=64, models_dir=str(models_dir)).images[..., 0]
    cut = run_annotator("depth_leres", frames, resolution=64, models_dir=str(models_dir), thr_b=50).images[..., 0]
    np.testing.assert_array_equal(cut, np.where(plain > 127.5, plain, 0))  # the farthest half turns black
    boosted = run_annotator("depth_leres++", frames, resolution=64, models_dir=str(models_dir)).images
    assert boosted.shape == (1, 64, 64, 3) and boosted.dtype == np.uint8 and int(boosted.max()) - int(boosted.min()) > 100


def test_missing_base_and_large_files_are_named(tmp_path):
    for name, file_name in (("depth_anything_v2_vitb", "depth_anything_v2_vitb.pth"), ("depth_anything_v2_vitl", "depth_anything_v2_vitl.pth")):
        with pytest.raises(MissingWeightsError) as caught:
            run_annotator(name, np.zeros((1, 28, 28, 3), np.uint8), models_dir=str(tmp_path))
        assert file_name in str(caught.value) and str(tmp_path) in str(caught.value)


@pytest.mark.parametrize(
    "encoder, shapes",
    [
        ("vitb", {"pretrained.pos_embed": (1, 1370, 768), "pretrained.blocks.11.attn.qkv.weight": (2304, 768),
                  "depth_head.projects.0.weight": (96, 768, 1, 1), "depth_head.resize_layers.3.weight": (768, 768, 3, 3),
                  "depth_head.scratch.layer4_rn.weight": (128, 768, 3, 3), "depth_head.scratch.output_conv1.weight": (64, 128, 3, 3)}),
        ("vitl", {"pretrained.pos_embed": (1, 1370, 1024), "pretrained.blocks.23.mlp.fc1.weight": (4096, 1024),
                  "depth_head.projects.0.weight": (256, 1024, 1, 1), "depth_head.projects.3.weight": (1024, 1024, 1, 1),
                  "depth_head.scratch.layer1_rn.weight": (256, 256, 3, 3), "depth_head.scratch.output_conv1.weight": (128, 256, 3, 3)}),
    ],
)
def test_base_and_large_published_layouts_load_as_their_presets(encoder, shapes):
    # Shapes of the published depth_anything_v2_vitb/vitl.pth (DINOv2 ViT-B/14 and ViT-L/14 with DPT heads of
    # 128 / 256 features), from the reference's model_configs.
    with torch.device("meta"):
        state = DepthAnythingV2Model(DepthAnythingV2Config.preset(encoder)).state_dict()
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert dav2_config(state, f"depth_anything_v2_{encoder}.pth") == DepthAnythingV2Config.preset(encoder)


def test_nodes_and_the_generic_dropdown(monkeypatch, tmp_path):
    nodes, _, _ = import_preprocessor_nodes(monkeypatch, tmp_path)
    dropdown = nodes.Preprocessor.INPUT_TYPES()["required"]["preprocessor"][0]
    assert set(PUBLISHED_FILES) <= set(dropdown)
    normal = nodes.NODE_CLASS_MAPPINGS["ControlNetPack_NormalMidasPreprocessor"].INPUT_TYPES()["required"]
    assert list(normal) == ["image", "resolution", "a", "bg_threshold"]
    assert normal["a"][1]["default"] == pytest.approx(2 * np.pi) and normal["bg_threshold"][1]["default"] == 0.1
    zoe = nodes.NODE_CLASS_MAPPINGS["ControlNetPack_DepthZoePreprocessor"].INPUT_TYPES()["required"]
    assert zoe["gamma_corrected"] == ("BOOLEAN", zoe["gamma_corrected"][1]) and zoe["resolution"][1]["default"] == 512
    boosted = nodes.NODE_CLASS_MAPPINGS["ControlNetPack_DepthLeresPlusPlusPreprocessor"].INPUT_TYPES()["required"]
    assert list(boosted) == ["image", "resolution", "thr_a", "thr_b"]
    assert isinstance(nodes, types.ModuleType)


def test_cli_lists_them(capsys):
    from annotators.__main__ import main

    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name, files in PUBLISHED_FILES.items():
        assert name in listed and files[0] in listed
