"""LeReS / LeReS++: published key layouts (res101.pth, latest_net_G.pth), loading, the reference's input
(BGR, 0..255 ImageNet-normalised), quantisation and thresholds, alignment, batching, the boosting
analysis on images with known answers, and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from annotator_factories import StandIn, assert_box, assert_missing_file_named, load_error, randomised, save_zeros_like
from annotators.common import MissingWeightsError
from annotators.leres import (
    MERGE_WEIGHT_FILE,
    WEIGHT_FILE,
    LeresConfig,
    LeresDetector,
    LeresModel,
    MergeConfig,
    MergeUNet,
    config_from_state_dict,
    depth_to_map,
    max_pool_blocks,
    network_input,
    processing_resolution,
    select_patches,
)
from annotators.leres.checkpoint import merge_config_from_state_dict
from annotators.midas import MidasConfig, MidasDPTModel

E = "depth_model.encoder_modules.encoder."
D = "depth_model.decoder_modules."
# The published res101.pth: torchvision's ResNeXt-101 32×8d (3/4/23/3 bottlenecks, grouped 3×3 convs of
# 8 channels per group) and LeReS' decoder (mid channels 256/256/256/512), from the reference code.
PUBLISHED_SHAPES = {
    E + "conv1.weight": (64, 3, 7, 7),
    E + "bn1.running_mean": (64,),
    E + "layer1.0.conv1.weight": (256, 64, 1, 1),
    E + "layer1.0.conv2.weight": (256, 8, 3, 3),
    E + "layer1.0.conv3.weight": (256, 256, 1, 1),
    E + "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    E + "layer1.0.downsample.1.num_batches_tracked": (),
    E + "layer2.0.conv2.weight": (512, 16, 3, 3),
    E + "layer3.22.conv2.weight": (1024, 32, 3, 3),
    E + "layer4.0.conv3.weight": (2048, 2048, 1, 1),
    E + "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    E + "layer4.2.bn3.weight": (2048,),
    D + "conv.conv1.weight": (512, 2048, 3, 3),
    D + "conv.conv_branch.1.weight": (512, 512, 3, 3),
    D + "conv.conv_branch.2.running_var": (512,),
    D + "conv.conv_branch.4.bias": (512,),
    D + "conv1.weight": (256, 512, 3, 3),
    D + "ffm2.ftb1.conv1.weight": (256, 1024, 3, 3),
    D + "ffm1.ftb1.conv1.weight": (256, 512, 3, 3),
    D + "ffm0.ftb2.conv1.weight": (256, 256, 3, 3),
    D + "outconv.adapt_conv.0.weight": (128, 256, 3, 3),
    D + "outconv.adapt_conv.1.running_var": (128,),
    D + "outconv.adapt_conv.3.weight": (1, 128, 3, 3),
}
PUBLISHED_KEY_COUNT = 712  # encoder 6 + 33 blocks × 18 + 4 downsamples × 6; decoder 88
# latest_net_G.pth: pix2pix unet_1024 without normalisation (bias only on the last transposed conv).
MERGE_SHAPES = {
    "model.model.0.weight": (64, 2, 4, 4),
    "model.model.1.model.1.weight": (128, 64, 4, 4),
    "model.model.1.model.5.weight": (256, 64, 4, 4),
    "model.model.1.model.3.model.3.model.1.weight": (512, 256, 4, 4),
    "model.model.1.model.3.model.3.model.5.weight": (1024, 256, 4, 4),
    "model.model.1" + ".model.3" * 8 + ".model.1.weight": (512, 512, 4, 4),  # innermost down
    "model.model.1" + ".model.3" * 8 + ".model.3.weight": (512, 512, 4, 4),  # innermost up
    "model.model.3.weight": (128, 1, 4, 4),
    "model.model.3.bias": (1,),
}

TINY = LeresConfig(base_planes=8, layers=(1, 1, 2, 1), groups=2, width_per_group=8, decoder_channels=(8, 8, 8, 16))
TINY_MERGE = MergeConfig(levels=6, base_filters=4, size=64)


def random_model(config: LeresConfig = TINY, seed: int = 0) -> LeresModel:
    return randomised(LeresModel(config), seed, std=0.1)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    # As AdelaiDepth saves it: the DataParallel state under "depth_model", beside the other models.
    state = {f"module.{key}": value for key, value in random_model().state_dict().items()}
    torch.save({"depth_model": state, "shift_model": {"w": torch.zeros(1)}}, folder / WEIGHT_FILE)
    torch.manual_seed(1)
    torch.save(MergeUNet(TINY_MERGE).state_dict(), folder / MERGE_WEIGHT_FILE)
    return folder


def test_the_published_architectures_have_the_published_keys_and_shapes():
    with torch.device("meta"):
        state = LeresModel().state_dict()
        merge = MergeUNet().state_dict()
    assert len(state) == PUBLISHED_KEY_COUNT
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert config_from_state_dict(state, WEIGHT_FILE) == LeresConfig()
    assert len(merge) == 21  # 10 down convs, 10 up convs, one bias
    for key, shape in MERGE_SHAPES.items():
        assert tuple(merge[key].shape) == shape, key
    assert merge_config_from_state_dict(merge, MERGE_WEIGHT_FILE) == MergeConfig()


def test_loader_reads_the_published_containers(weights_dir):
    detector = LeresDetector.from_folder(weights_dir)
    saved = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)["depth_model"]
    assert detector.model.config == TINY
    loaded = detector.model.state_dict()
    for key in (E + "layer3.1.conv2.weight", D + "ffm1.ftb2.conv_branch.2.running_mean"):
        assert torch.equal(loaded[key], saved["module." + key])
    merge = detector.merge_network()  # latest_net_G.pth from the same folder, on first use
    assert merge.config == TINY_MERGE
    merge_saved = torch.load(weights_dir / MERGE_WEIGHT_FILE, map_location="cpu", weights_only=True)
    assert torch.equal(merge.model.model[3].weight, merge_saved["model.model.3.weight"])


def test_network_input_is_bgr_0_255_imagenet_normalised():
    pixel = torch.tensor([[[[255, 0, 51]]]], dtype=torch.uint8)  # R, G, B
    seen = network_input(pixel)[0, :, 0, 0]
    expected = torch.tensor([(51 - 0.485) / 0.229, (0 - 0.456) / 0.224, (255 - 0.406) / 0.225])  # B, G, R
    torch.testing.assert_close(seen, expected)


def test_depth_to_map_quantises_inverts_and_thresholds_like_the_reference():
    depth = np.array([[0.0, 0.1, 0.5, 1.0]])
    # 16-bit truncation then 8-bit rounding: 0.1 → floor(6553.5) = 6553 → 6553·255/65535 = 25.498 → 25.
    # 0.5 → floor(32767.5) = 32767 → 127.498 → 127 → inverted 128.
    assert depth_to_map(depth).tolist() == [[255.0, 230.0, 128.0, 0.0]]
    # thr_a 20 %: depth levels ≤ 51 become 0 before the inversion, i.e. the nearest pixels turn white.
    assert depth_to_map(depth, thr_a=20).tolist() == [[255.0, 255.0, 128.0, 0.0]]
    # thr_b 60 %: after the inversion, levels ≤ 153 become black (the far background).
    assert depth_to_map(depth, thr_b=60).tolist() == [[255.0, 230.0, 0.0, 0.0]]
    assert depth_to_map(np.full((2, 2), 3.0)).tolist() == [[255.0, 255.0], [255.0, 255.0]]


def DarknessAsDepth() -> StandIn:
    """Stand-in network: depth = −(mean input), so bright pixels are near."""
    return StandIn(lambda image: -image.mean(dim=1))


# Shrinking sizes: enlarging would add cubic ringing around the patch, and min-max would pick it up.
@pytest.mark.parametrize("size, resolution", [((300, 421), 128), ((451, 307), 96)])
def test_maps_are_aligned_with_the_input_and_near_is_bright(size, resolution):
    height, width = size
    image = np.full((height, width, 3), 40, np.uint8)
    top, left = height // 3, width // 2 + 3
    image[top : top + 48, left : left + 36] = 255
    maps = LeresDetector(DarknessAsDepth())(image, resolution=resolution)[0]
    assert maps.shape == (height, width)
    assert_box(maps > 0.5, top, left, 48, 36)
    assert maps[top + 24, left + 18] == pytest.approx(1.0) and maps[2, 2] == pytest.approx(0.0)


def test_real_network_batches_like_single_frames(weights_dir):
    detector = LeresDetector.from_folder(weights_dir)
    batch = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    maps = detector(batch, resolution=64)
    assert maps.shape == (3, 40, 56) and maps.dtype == np.float32 and 0.0 <= maps.min() and maps.max() <= 1.0
    assert all(frame.max() - frame.min() > 0.5 for frame in maps)  # each frame spans the range
    alone = np.concatenate([detector(frame, resolution=64) for frame in batch])
    # A map level can flip by one 8-bit step where the float depth sits on a rounding edge.
    assert np.abs(maps - alone).max() <= 1.5 / 255


def test_blend_mask_equals_opencvs_blur_of_the_square():
    import math

    import cv2

    size = 320  # the reference's recipe at a smaller size: 15 % margin, σ = size/16, 2⌈2σ⌉+1 taps
    square = np.zeros((size, size), np.float32)
    square[48:272, 48:272] = 1
    sigma = size // 16
    blurred = cv2.GaussianBlur(square, (2 * math.ceil(2 * sigma) + 1,) * 2, sigma)
    expected = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    from annotators.leres.boost import blend_mask

    np.testing.assert_allclose(blend_mask(size), expected, atol=1e-6)  # float32 blur vs float64 profile


def test_block_max_pooling_pads_partial_blocks_with_zero():
    image = np.arange(1, 26, dtype=np.float64).reshape(5, 5)
    np.testing.assert_array_equal(max_pool_blocks(image, 2), [[7, 9, 10], [17, 19, 20], [22, 24, 25]])
    np.testing.assert_array_equal(max_pool_blocks(-image, 2)[2], [0, 0, 0])  # the zero padding wins


def test_processing_resolution_known_answers():
    # No edges anywhere: the thresholded gradient is all ones, coverage never fails, so the search runs
    # to its last step: sizes 14, 21, 28, 35, 42 (× 32) under min(1600, 3·512) / 32 = 48.
    flat = np.full((512, 512, 3), 90, np.uint8)
    assert processing_resolution(flat) == (42 * 32, 1.0)
    # Edges only in one small corner: at the first step most of the image is uncovered → 448.
    corner = flat.copy()
    corner[:40:2, :40] = 255
    size, patch_scale = processing_resolution(corner)
    assert size == 448 and 0.0 < patch_scale < 0.2


def test_patch_selection_keeps_edge_dense_patches_largest_first():
    image = np.full((600, 600, 3), 90, np.uint8)
    image[350:560:3, 350:560] = 255  # texture in the lower right only
    patches = select_patches(image, base_size=200, factor=1.0)
    assert patches and all(rect[0] + rect[2] > 350 and rect[1] + rect[3] > 350 for rect in patches)
    assert [rect[2] for rect in patches] == sorted((rect[2] for rect in patches), reverse=True)


def test_boosted_maps_with_local_patches(weights_dir):
    detector = LeresDetector.from_folder(weights_dir)
    image = np.full((512, 640, 3), 90, np.uint8)
    image[300:460:3, 380:560] = 255  # sparse edges → whole-image size 448 ≤ 640: patches are refined
    maps = detector(image, resolution=512, boost=True)
    assert maps.shape == (1, 512, 640) and maps.min() == 0.0 and maps.max() == 1.0


def test_wrong_garbled_and_missing_files_get_clear_errors(weights_dir, tmp_path):
    midas = save_zeros_like(lambda: MidasDPTModel(MidasConfig(depth=4, stage_depths=(1, 1, 1))), tmp_path / "dpt_hybrid-midas-501f0c75.pt")
    message = load_error(LeresDetector.from_file, midas)
    assert "dpt_hybrid-midas-501f0c75.pt" in message and "LeReS" in message and "looks like the MiDaS" in message

    saved = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)["depth_model"]
    del saved["module." + D + "conv1.bias"]
    saved["module." + E + "layer2.0.conv1.weight"] = torch.zeros(4, 31, 1, 1)
    torch.save({"depth_model": saved}, tmp_path / "garbled.pth")
    message = load_error(LeresDetector.from_file, tmp_path / "garbled.pth")
    assert "garbled.pth" in message and f"'{D}conv1.bias'" in message
    assert f"'{E}layer2.0.conv1.weight' expected [4, 32, 1, 1] found [4, 31, 1, 1]" in message

    assert_missing_file_named(LeresDetector.from_folder, tmp_path, WEIGHT_FILE)
    # Boost without the merge network names latest_net_G.pth and the folder.
    (tmp_path / "only").mkdir()
    torch.save({"depth_model": random_model().state_dict()}, tmp_path / "only" / WEIGHT_FILE)
    without_merge = LeresDetector.from_folder(tmp_path / "only")
    with pytest.raises(MissingWeightsError) as missing:
        without_merge(np.zeros((64, 64, 3), np.uint8), resolution=64, boost=True)
    assert MERGE_WEIGHT_FILE in str(missing.value) and str(tmp_path / "only") in str(missing.value)
