"""HED soft edge: published key layout, loading, errors, batching, alignment and the safe mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from annotators.common import AnnotatorInputError, MissingWeightsError
from annotators.depth_anything_v2 import DepthAnythingV2
from annotators.hed import WEIGHT_FILE, HEDDetector, HEDModel

# The published ControlNetHED.pth: a learned RGB offset and five VGG-style blocks with 2, 2, 3, 3, 3
# convs (64, 128, 256, 512, 512 channels), each with a 1×1 projection to one channel.
PUBLISHED_SHAPES = {
    "norm": (1, 3, 1, 1),
    "block1.convs.0.weight": (64, 3, 3, 3),
    "block1.convs.1.weight": (64, 64, 3, 3),
    "block1.projection.weight": (1, 64, 1, 1),
    "block2.convs.1.bias": (128,),
    "block3.convs.2.weight": (256, 256, 3, 3),
    "block4.convs.0.weight": (512, 256, 3, 3),
    "block5.convs.2.weight": (512, 512, 3, 3),
    "block5.projection.bias": (1,),
}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    torch.manual_seed(0)
    torch.save(HEDModel().state_dict(), folder / WEIGHT_FILE)
    return folder


def test_saved_random_weights_have_the_published_layout(weights_dir):
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    assert len(state) == 37
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_detector_runs_batched_and_returns_maps_at_the_input_size(weights_dir):
    detector = HEDDetector.from_folder(weights_dir)
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    assert torch.equal(detector.model.block3.convs[2].weight, state["block3.convs.2.weight"])
    batch = np.random.default_rng(0).integers(0, 256, (3, 37, 51, 3), dtype=np.uint8)
    edges = detector(batch, resolution=64)
    assert edges.shape == (3, 37, 51) and edges.dtype == np.float32
    assert 0.0 <= edges.min() and edges.max() <= 1.0
    alone = detector(batch[1], resolution=64)
    np.testing.assert_allclose(edges[1:2], alone, atol=1e-5)
    chunked = detector(batch, resolution=64, batch_size=2)
    np.testing.assert_allclose(edges, chunked, atol=1e-5)


def test_safetensors_files_load_too(weights_dir, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    save_file(state, tmp_path / "ControlNetHED.safetensors")
    detector = HEDDetector.from_folder(tmp_path, file_name="ControlNetHED.safetensors")
    assert torch.equal(detector.model.block5.projection.weight, state["block5.projection.weight"])


def red_channel_model() -> HEDModel:
    """Real architecture with chosen weights: logit = (red - 128) / 5 at every pixel.

    Block 1 passes the red channel through both convs (ReLU keeps it, it is ≥ 0) and projects it
    with bias -128; blocks 2-5 are all zero, so the average of the five side outputs is that / 5.
    """
    model = HEDModel()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.block1.convs[0].weight[0, 0, 1, 1] = 1.0
        model.block1.convs[1].weight[0, 0, 1, 1] = 1.0
        model.block1.projection.weight[0, 0] = 1.0
        model.block1.projection.bias.fill_(-128.0)
    return model


@pytest.mark.parametrize("size, resolution", [((120, 90), 64), ((50, 75), 128)])
def test_edges_are_aligned_with_the_input_pixels(size, resolution):
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    top, left = height // 4, width // 3
    image[top : top + 30, left : left + 24, 0] = 255
    edges = HEDDetector(red_channel_model())(image, resolution=resolution)[0]
    ys, xs = np.nonzero(edges > 0.5)
    assert abs(ys.min() - top) <= 1 and abs(ys.max() - (top + 29)) <= 1
    assert abs(xs.min() - left) <= 1 and abs(xs.max() - (left + 23)) <= 1
    inside = 1 / (1 + np.exp(-(255 - 128) / 5))
    assert edges[top + 15, left + 12] == pytest.approx(inside, abs=1e-3)


def test_safe_mode_quantises_to_three_levels():
    gradient = np.tile(np.linspace(0, 255, 96).astype(np.uint8)[None, :, None], (64, 1, 3))
    detector = HEDDetector(red_channel_model())
    soft = detector(gradient, resolution=64)[0]
    safe = detector(gradient, resolution=64, safe=True)[0]
    assert set(np.unique(safe).tolist()) == {0.0, 0.5, 1.0}
    # A level is reached exactly where the soft map crosses 1/3 and 2/3.
    assert (safe[soft < 1 / 3 - 1e-4] == 0.0).all() and (safe[soft > 2 / 3 + 1e-4] == 1.0).all()


def test_wrong_garbled_and_missing_files_get_clear_errors(weights_dir, tmp_path):
    depth_file = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(DepthAnythingV2.random().model.state_dict(), depth_file)  # the published Depth Anything layout
    with pytest.raises(AnnotatorInputError) as caught:
        HEDDetector.from_file(tmp_path / "depth_anything_v2_vits.pth")
    message = str(caught.value)
    assert "depth_anything_v2_vits.pth" in message and "looks like a Depth Anything" in message

    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    state["block2.convs.0.weight"] = state["block2.convs.0.weight"][:, :32]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "garbled.pth")
    with pytest.raises(AnnotatorInputError) as caught:
        HEDDetector.from_file(tmp_path / "garbled.pth")
    message = str(caught.value)
    assert "garbled.pth" in message and "'extra.weight'" in message
    assert "'block2.convs.0.weight' expected [128, 64, 3, 3] found [128, 32, 3, 3]" in message

    with pytest.raises(MissingWeightsError) as missing:
        HEDDetector.from_folder(tmp_path)
    assert WEIGHT_FILE in str(missing.value) and str(tmp_path) in str(missing.value)


def test_bad_images_are_rejected(weights_dir):
    detector = HEDDetector(red_channel_model())
    with pytest.raises(AnnotatorInputError):
        detector(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(AnnotatorInputError):
        detector(np.zeros((10, 10, 2), np.uint8))
