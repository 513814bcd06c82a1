"""Line and edge annotators (issue 11): line art, anime line art, M-LSD, PiDiNet, TEED and the HED
scribble modes.

- The published files (key names, shapes, containers) are written with random weights and read
  through the real loaders; the layout facts below are taken by hand from the reference code
  (controlnet_aux / ControlNet-v1-1-nightly). test_controlnet_aux_parity.py compares whole key
  sets and outputs with controlnet_aux itself when a checkout is available.
- Pre- and post-processing are checked on inputs whose answers are derived by hand: the
  network's input scaling and channel order, 8-bit truncation and inversion, safe steps, scribble
  strokes, M-LSD decoding and drawing, alignment at other sizes, and batching.
"""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from annotators import run_annotator
from annotators.common import AnnotatorInputError, MissingWeightsError
from annotators.hed import HEDDetector, HEDModel
from annotators.lineart import LineartCoarseDetector, LineartConfig, LineartDetector, LineartGenerator
from annotators.lineart_anime import AnimeLineartConfig, AnimeLineartUNet, LineartAnimeDetector
from annotators.mlsd import MLSDDetector, MLSDModel
from annotators.pidinet import PiDiNetConfig, PiDiNetDetector, PiDiNetModel
from annotators.registry import REGISTRY, get_spec
from annotators.teed import TEEDDetector, TEEDModel
from test_hed import red_channel_model

# Published layouts, read off the reference code (key count, and the shape of telling keys).
PUBLISHED = {
    "sk_model.pth": (24, {  # Generator(3, 1, n_residual_blocks=3): norms hold no parameters
        "model0.1.weight": (64, 3, 7, 7),
        "model1.0.weight": (128, 64, 3, 3),
        "model1.3.weight": (256, 128, 3, 3),
        "model2.2.conv_block.5.weight": (256, 256, 3, 3),
        "model3.0.weight": (256, 128, 3, 3),  # transposed conv: in, out
        "model3.3.bias": (64,),
        "model4.1.weight": (1, 64, 7, 7),
    }),
    "netG.pth": (32, {  # UnetGenerator(3, 1, num_downs=8, ngf=64): 8 levels, each a down and an up conv
        "model.model.0.weight": (64, 3, 4, 4),
        "model.model.3.weight": (128, 1, 4, 4),
        "model.model.1.model.1.weight": (128, 64, 4, 4),
        "model.model.1.model.5.weight": (256, 64, 4, 4),
        "model.model.1.model.3.model.3.model.1.weight": (512, 256, 4, 4),
        "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.1.weight": (512, 512, 4, 4),
        "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.3.bias": (512,),
    }),
    "mlsd_large_512_fp32.pth": (362, {  # MobileV2_MLSD_Large, batch norms with their counters
        "backbone.features.0.0.weight": (32, 4, 3, 3),
        "backbone.features.1.conv.0.0.weight": (32, 1, 3, 3),
        "backbone.features.2.conv.1.0.weight": (96, 1, 3, 3),
        "backbone.features.13.conv.3.running_var": (96,),
        "backbone.features.13.conv.3.num_batches_tracked": (),
        "block15.conv1.0.weight": (64, 96, 1, 1),
        "block15.conv2.0.weight": (64, 64, 1, 1),
        "block17.conv2.0.weight": (64, 32, 1, 1),
        "block22.conv2.0.weight": (64, 128, 3, 3),
        "block23.conv1.0.weight": (64, 64, 3, 3),
        "block23.conv3.weight": (16, 64, 1, 1),
    }),
    "table5_pidinet.pth": (83, {  # pidinet(): carv4, 60 channels, dil 24, sa — under "state_dict", "module."
        "module.init_block.weight": (60, 3, 3, 3),
        "module.block1_1.conv1.weight": (60, 1, 3, 3),
        "module.block2_1.shortcut.weight": (120, 60, 1, 1),
        "module.block3_1.conv2.weight": (240, 120, 1, 1),
        "module.block4_1.shortcut.bias": (240,),
        "module.dilations.0.conv1.weight": (24, 60, 1, 1),
        "module.dilations.3.conv2_4.weight": (24, 24, 3, 3),
        "module.attentions.2.conv2.weight": (1, 4, 3, 3),
        "module.conv_reduces.3.conv.weight": (1, 24, 1, 1),
        "module.classifier.weight": (1, 4, 1, 1),
    }),
    "5_model.pth": (36, {  # TED()
        "block_1.conv1.weight": (16, 3, 3, 3),
        "block_2.conv2.weight": (32, 32, 3, 3),
        "dblock_3.denselayer1.conv1.weight": (48, 32, 3, 3),
        "side_1.conv.weight": (32, 16, 1, 1),
        "up_block_3.features.3.weight": (1, 16, 1, 1),
        "up_block_3.features.5.weight": (1, 1, 4, 4),
        "block_cat.DWconv1.weight": (24, 1, 3, 3),
        "block_cat.DWconv2.weight": (24, 1, 3, 3),
    }),
}

NEW_IDS = [
    "lineart_realistic", "lineart_coarse", "lineart_anime", "mlsd", "softedge_pidinet", "scribble_pidinet",
    "softedge_pidsafe", "scribble_pidsafe", "scribble_hed", "softedge_hed", "softedge_hedsafe", "scribble_hedsafe", "teed",
]
SCRIBBLE_IDS = {"scribble_pidinet", "scribble_pidsafe", "scribble_hed", "scribble_hedsafe"}


def adam_state() -> dict:
    """What ``torch.optim.Adam.state_dict()`` holds, as PiDiNet's training checkpoints carry it."""
    moments = {"step": torch.tensor(2.0), "exp_avg": torch.rand(3), "exp_avg_sq": torch.rand(3)}
    group = {"lr": 0.005, "betas": (0.9, 0.99), "eps": 1e-08, "weight_decay": 0.0001, "amsgrad": False, "params": [0]}
    return {"state": {0: moments}, "param_groups": [group]}


@pytest.fixture(scope="module")
def published_dir(tmp_path_factory):
    """Every published file, random weights, in its published container."""
    folder = tmp_path_factory.mktemp("annotators")
    torch.manual_seed(0)
    torch.save(LineartGenerator().state_dict(), folder / "sk_model.pth")
    torch.save(LineartGenerator().state_dict(), folder / "sk_model2.pth")
    # netG.pth as saved from DataParallel: every key under "module." (the reference strips it).
    torch.save({"module." + key: value for key, value in AnimeLineartUNet().state_dict().items()}, folder / "netG.pth")
    torch.save(MLSDModel().state_dict(), folder / "mlsd_large_512_fp32.pth")
    pidinet = {"module." + key: value for key, value in PiDiNetModel().state_dict().items()}
    torch.save({"epoch": 19, "state_dict": pidinet, "optimizer": adam_state()}, folder / "table5_pidinet.pth")
    torch.save(TEEDModel().state_dict(), folder / "5_model.pth")
    torch.save(HEDModel().state_dict(), folder / "ControlNetHED.pth")
    return folder


@pytest.mark.parametrize("file_name", sorted(PUBLISHED))
def test_saved_files_have_the_published_layout(published_dir, file_name):
    count, shapes = PUBLISHED[file_name]
    state = torch.load(published_dir / file_name, map_location="cpu", weights_only=True)
    if file_name == "table5_pidinet.pth":
        assert set(state) == {"epoch", "state_dict", "optimizer"}
        state = state["state_dict"]
    if file_name == "netG.pth":  # saved from DataParallel here; the published layout is the same below the prefix
        state = {key.removeprefix("module."): value for key, value in state.items()}
    assert len(state) == count
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("detector, file_name, key", [
    (LineartDetector, "sk_model.pth", "model2.1.conv_block.1.weight"),
    (LineartCoarseDetector, "sk_model2.pth", "model4.1.bias"),
    (LineartAnimeDetector, "netG.pth", "model.model.1.model.3.model.1.weight"),
    (MLSDDetector, "mlsd_large_512_fp32.pth", "backbone.features.7.conv.1.1.running_mean"),
    (PiDiNetDetector, "table5_pidinet.pth", "dilations.2.conv2_3.weight"),
    (TEEDDetector, "5_model.pth", "up_block_3.features.2.weight"),
])
def test_published_files_load_through_the_real_loaders(published_dir, detector, file_name, key):
    loaded = detector.from_folder(published_dir)
    state = torch.load(published_dir / file_name, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    stored = state.get(key, state.get("module." + key))
    assert torch.equal(loaded.model.state_dict()[key], stored)
    assert not loaded.model.training and loaded.dtype == torch.float32


def test_containers_prefixes_and_missing_batchnorm_counters_are_accepted(published_dir, tmp_path):
    state = torch.load(published_dir / "mlsd_large_512_fp32.pth", map_location="cpu", weights_only=True)
    without_counters = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    torch.save({"model": {"module." + key: value for key, value in without_counters.items()}}, tmp_path / "m.pth")
    loaded = MLSDDetector.from_file(tmp_path / "m.pth")
    assert torch.equal(loaded.model.block23.conv3.weight, state["block23.conv3.weight"])
    assert int(loaded.model.block16.conv1[1].num_batches_tracked) == 0


@pytest.mark.parametrize("detector, wrong_file, looks_like", [
    (LineartDetector, "5_model.pth", "TEED"),
    (LineartAnimeDetector, "sk_model.pth", "line-art generator"),
    (MLSDDetector, "table5_pidinet.pth", "PiDiNet"),
    (PiDiNetDetector, "ControlNetHED.pth", "HED"),
    (TEEDDetector, "mlsd_large_512_fp32.pth", "M-LSD"),
])
def test_wrong_and_missing_files_get_clear_errors(published_dir, tmp_path, detector, wrong_file, looks_like):
    shutil.copy(published_dir / wrong_file, tmp_path / detector.weight_file)
    with pytest.raises(AnnotatorInputError) as caught:
        detector.from_folder(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / detector.weight_file) in message and "missing" in message
    assert looks_like in message.split("The file looks like")[1]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError) as missing:
        detector.from_folder(empty)
    assert detector.weight_file in str(missing.value) and str(empty) in str(missing.value)


def test_a_garbled_file_names_the_bad_key_and_shape(published_dir, tmp_path):
    state = torch.load(published_dir / "5_model.pth", map_location="cpu", weights_only=True)
    state["block_2.conv1.weight"] = state["block_2.conv1.weight"][:, :8]
    torch.save(state, tmp_path / "5_model.pth")
    with pytest.raises(AnnotatorInputError, match=r"'block_2.conv1.weight' expected \[32, 16, 3, 3\] found \[32, 8, 3, 3\]"):
        TEEDDetector.from_folder(tmp_path)


@pytest.mark.parametrize("name", NEW_IDS)
def test_every_new_id_runs_by_name_at_the_input_size(published_dir, name):
    frames = np.random.default_rng(1).integers(0, 256, (2, 29, 31, 3), dtype=np.uint8)
    seen = []
    result = run_annotator(name, frames, resolution=64, models_dir=str(published_dir),
                           on_progress=lambda done, total: seen.append((done, total)))
    maps = result.images
    assert maps.shape == (2, 29, 31, 3) and maps.dtype == np.uint8 and seen[-1] == (2, 2)
    assert (maps[..., 0] == maps[..., 1]).all() and (maps[..., 0] == maps[..., 2]).all()
    if name in SCRIBBLE_IDS:
        assert set(np.unique(maps)) <= {0, 255}


def test_ids_and_aliases_are_registered_with_the_published_files():
    weights = {name: [w.file_name for w in get_spec(name).weights] for name in NEW_IDS}
    assert weights["lineart_realistic"] == ["sk_model.pth"] and weights["lineart_coarse"] == ["sk_model2.pth"]
    assert weights["lineart_anime"] == ["netG.pth"] and weights["mlsd"] == ["mlsd_large_512_fp32.pth"]
    assert weights["teed"] == ["5_model.pth"] and weights["scribble_hedsafe"] == ["ControlNetHED.pth"]
    assert {weights[name][0] for name in NEW_IDS if "pid" in name} == {"table5_pidinet.pth"}
    # controlnet_aux's processor defaults; aliases fix what their id says and expose the rest.
    assert get_spec("mlsd").resolve_params() == {"score_threshold": 0.1, "distance_threshold": 0.1}
    assert get_spec("teed").resolve_params() == {"safe_steps": 2}
    assert dict(get_spec("scribble_pidsafe").preset) == {"scribble": True, "safe": True}
    assert get_spec("scribble_pidsafe").params == () and get_spec("scribble_pidsafe").alias_of == "scribble_pidinet"
    assert get_spec("softedge_hed").alias_of == "hed" and [p.name for p in get_spec("softedge_hed").params] == ["safe"]
    with pytest.raises(AnnotatorInputError, match="unknown parameter 'safe'"):
        run_annotator("softedge_hedsafe", np.zeros((8, 8, 3), np.uint8), safe=False)
    assert all(REGISTRY[name].alias_of in (None, *REGISTRY) for name in REGISTRY)


class Recorder(nn.Module):
    """Test double for a detector's network: keeps what it is given and answers ``respond(input)``."""

    def __init__(self, respond, config=None) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # the detector reads device and dtype from it
        self.respond, self.config, self.inputs = respond, config, []

    def forward(self, tensor: torch.Tensor):
        self.inputs.append(tensor.clone())
        return self.respond(tensor)

    mean_logit = forward  # TEED's and HED's detectors ask for the averaged logit by this name


COLOUR = (10, 100, 250)  # R, G, B


@pytest.mark.parametrize("detector_class, output_channels, expected_input", [
    (LineartDetector, (1,), [c / np.float32(255) for c in COLOUR]),
    (LineartAnimeDetector, (1,), [np.float32(c) / np.float32(127.5) - 1 for c in COLOUR]),
    (MLSDDetector, (9,), [np.float32(c) / np.float32(127.5) - 1 for c in (*COLOUR, 1)]),
    (PiDiNetDetector, (), [c / np.float32(255) for c in COLOUR[::-1]]),  # BGR
    (TEEDDetector, (), [float(c) for c in COLOUR]),
])
def test_networks_receive_the_scaling_and_channel_order_they_were_trained_on(detector_class, output_channels, expected_input):
    recorder = Recorder(lambda tensor: torch.zeros(tensor.shape[0], *output_channels, *tensor.shape[-2:]),
                        AnimeLineartConfig())
    detector_class(recorder)(np.full((64, 64, 3), COLOUR, np.uint8), resolution=64)
    received = recorder.inputs[0]
    assert received.dtype == torch.float32 and received.shape[:2] == (1, len(expected_input))
    for channel, value in enumerate(expected_input):
        assert (received[0, channel] == torch.tensor(value, dtype=torch.float32)).all(), channel


def zero_weights(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return model.eval()


def test_lineart_is_inverted_and_truncated_like_the_original():
    """All-zero weights: every norm sees zeros, so the page is sigmoid(head bias) everywhere.
    A page of 200.7/255 truncates to 200 (rounding would give 201) and inverts to 55."""
    model = zero_weights(LineartGenerator(LineartConfig(base_channels=4)))
    with torch.no_grad():
        model.model4[1].bias.fill_(math.log(200.7 / (255 - 200.7)))
    maps = LineartDetector(model)(np.random.default_rng(0).integers(0, 256, (2, 45, 70, 3), dtype=np.uint8), resolution=64)
    assert maps.shape == (2, 45, 70) and (maps == 55).all()


def test_anime_lineart_is_inverted_and_truncated_like_the_original():
    """All-zero weights: the tanh head sees only its bias; tanh(b)·127.5 + 127.5 = 100.6 → 100 → 155."""
    model = zero_weights(AnimeLineartUNet(AnimeLineartConfig(base_channels=2)))
    with torch.no_grad():
        model.model.model[3].bias.fill_(math.atanh(100.6 / 127.5 - 1))
    maps = LineartAnimeDetector(model)(np.zeros((30, 40, 3), np.uint8), resolution=64)
    assert maps.shape == (1, 30, 40) and (maps == 155).all()


def red_rectangle(height: int = 75, width: int = 101) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    image = np.zeros((height, width, 3), np.uint8)
    box = (20, 49, 30, 69)  # rows top..bottom, columns left..right (inclusive)
    image[box[0] : box[1] + 1, box[2] : box[3] + 1, 0] = 255
    return image, box


# Stand-ins that answer "edge strength = red" in each network's own output convention.
RED_AS_EDGES = {
    "lineart": lambda: LineartDetector(Recorder(lambda rgb: 1 - rgb[:, :1])),  # page dark where red
    "lineart_anime": lambda: LineartAnimeDetector(Recorder(lambda x: -x[:, :1], AnimeLineartConfig())),
    "pidinet": lambda: PiDiNetDetector(Recorder(lambda bgr: bgr[:, 2])),
    "teed": lambda: TEEDDetector(Recorder(lambda rgb: (rgb[:, 0] - 127.5) / 4)),
}


@pytest.mark.parametrize("name", sorted(RED_AS_EDGES))
@pytest.mark.parametrize("resolution", [64, 160])
def test_maps_are_aligned_with_the_input_at_other_sizes(name, resolution):
    image, (top, bottom, left, right) = red_rectangle()
    options = {"safe_steps": 0} if name == "teed" else {}
    edges = RED_AS_EDGES[name]()(image, resolution=resolution, **options)[0]
    assert edges.shape == image.shape[:2]
    ys, xs = np.nonzero(edges > 127)
    assert abs(ys.min() - top) <= 1 and abs(ys.max() - bottom) <= 1
    assert abs(xs.min() - left) <= 1 and abs(xs.max() - right) <= 1
    assert edges[(top + bottom) // 2, (left + right) // 2] >= 254 and edges[5, 5] <= 1


def test_pidinet_safe_mode_has_three_levels_at_thirds():
    """p = red / 255; safe: ⌊3p⌋ / 2 → 0 below 1/3, ½ (127 after truncation) below 2/3, else 1."""
    red = np.arange(256, dtype=np.uint8)
    image = np.zeros((64, 256, 3), np.uint8)
    image[..., 0] = red
    safe = PiDiNetDetector(Recorder(lambda bgr: bgr[:, 2]))(image, resolution=64, safe=True)[0]
    expected = np.where(red < 85, 0, np.where(red < 170, 127, 255))  # 85/255 = 1/3, 170/255 = 2/3
    assert (safe == expected[None, :]).all()


def test_teed_sigmoid_truncation_and_safe_steps():
    """logit = (red − 128) / 16. safe_steps 2: below 1/3 ⇔ logit < −ln 2 ⇔ red ≤ 116; at least 2/3 ⇔
    red ≥ 140. safe_steps 0: red 128 gives p = ½, 127.5, truncated to 127."""
    red = np.arange(256, dtype=np.uint8)
    image = np.zeros((64, 256, 3), np.uint8)
    image[..., 0] = red
    detector = TEEDDetector(Recorder(lambda rgb: (rgb[:, 0] - 128) / 16))
    steps2 = detector(image, resolution=64)[0]
    assert (steps2 == np.where(red <= 116, 0, np.where(red <= 139, 127, 255))[None, :]).all()
    soft = detector(image, resolution=64, safe_steps=0)[0]
    # 255·σ(7.9375) = 254.91 at red 255.
    assert soft[0, 128] == 127 and soft[0, 0] == 0 and soft[0, 255] == 254
    assert set(np.unique(detector(image, resolution=64, safe_steps=3))) == {0, 85, 170, 255}


def band_image(centre: int = 32, half_width: int = 4, size: int = 64) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[:, centre - half_width : centre + half_width + 1, 0] = 255
    return image


def pidinet_scribble(image: np.ndarray) -> np.ndarray:
    return PiDiNetDetector(Recorder(lambda bgr: bgr[:, 2]))(image, resolution=64, scribble=True)


def hed_scribble(image: np.ndarray) -> np.ndarray:
    """HED's real network with chosen weights: p = σ((red − 128) / 5), 254 (truncated) inside the band."""
    return HEDDetector(red_channel_model()).scribble(image, resolution=64)


@pytest.mark.parametrize("scribble", [pidinet_scribble, hed_scribble])
def test_scribble_strokes_from_a_known_band(scribble):
    """A 9-px edge band (p = 1). Thinning: blurred (σ 3) it is 221 at the centre, 144 at ±4 and 110
    at ±5, and a vertical band is its own maximum along the vertical, so columns ±4 pass the
    127 threshold. The second blur (σ 3, 19 taps on uint8) of that 9-px ridge is 8 at ±10 and
    3.6 → 4 at ±11, and only values above 4 become strokes: a binary stroke 21 px wide."""
    strokes = scribble(band_image())[0]
    expected = np.zeros(64, np.uint8)
    expected[32 - 10 : 32 + 11] = 255
    assert (strokes == expected[None, :]).all()


def test_scribbles_stay_binary_and_aligned_at_other_sizes():
    image = np.zeros((151, 203, 3), np.uint8)
    top, bottom, left, right = 60, 89, 80, 119  # 30×40 px: about 13×17 at detection, thick enough to stay
    image[top : bottom + 1, left : right + 1, 0] = 255
    strokes = PiDiNetDetector(Recorder(lambda bgr: bgr[:, 2]))(image, resolution=64, scribble=True)[0]
    assert strokes.shape == (151, 203) and set(np.unique(strokes)) == {0, 255}
    ys, xs = np.nonzero(strokes)
    # The strokes surround the rectangle: a ridge band plus ~10 detection pixels (≈ 24 input px) of blur.
    assert top - 30 <= ys.min() <= top and bottom <= ys.max() <= bottom + 30
    assert left - 30 <= xs.min() <= left and right <= xs.max() <= right + 30


def mlsd_maps(size: int = 32) -> torch.Tensor:
    """Output maps (B×9×32×32) with four candidate centres, answers by hand:
    A (10, 20): score σ(2) = 0.88, displacement (−5.3, 0.4) → (4.6, 0.4): drawn, ×2 and truncated
      from (29.4, 20.8) → (29, 20) to (49.2, 20.8) → (49, 20);
    B (20, 10): σ(−1) = 0.27 but zero length: dropped by the distance threshold;
    C (25, 25): long but σ(−3) = 0.047 < 0.1: dropped by the score threshold;
    D (10, 21): next to A with a lower score: not a 3×3 peak, dropped."""
    maps = torch.zeros(1, 9, size, size)
    maps[:, 0] = -10.0
    maps[0, 0, 10, 20] = 2.0
    maps[0, 1:5, 10, 20] = torch.tensor([-5.3, 0.4, 4.6, 0.4])
    maps[0, 0, 20, 10] = -1.0
    maps[0, 0, 25, 25] = -3.0
    maps[0, 1:5, 25, 25] = torch.tensor([0.0, -5.0, 0.0, 5.0])
    maps[0, 0, 10, 21] = 1.0
    maps[0, 1:5, 10, 21] = torch.tensor([0.0, -3.0, 0.0, 3.0])
    return maps


def test_mlsd_decodes_thresholds_truncates_and_draws_like_the_original():
    detector = MLSDDetector(Recorder(lambda x: mlsd_maps().expand(len(x), -1, -1, -1)))
    lines = detector(np.zeros((2, 64, 64, 3), np.uint8), resolution=64)
    expected = np.zeros((64, 64), np.uint8)
    expected[20, 29:50] = 255
    assert lines.shape == (2, 64, 64) and (lines == expected).all()
    low_score = detector(np.zeros((64, 64, 3), np.uint8), resolution=64, score_threshold=0.01)[0]
    expected[40:61, 50] = 255  # C now passes: (50, 40) to (50, 60)
    assert (low_score == expected).all()
    long_only = detector(np.zeros((64, 64, 3), np.uint8), resolution=64, distance_threshold=10.5)[0]
    assert long_only.max() == 0  # A is 9.9 output pixels long


def test_mlsd_lines_are_aligned_when_the_input_is_larger():
    """The same segment detected at 64 and drawn back on a 128² input: row 20 maps to rows 40-41
    (linear: ¾·255 = 191), rows 39 and 42 get ¼·255 = 64."""
    detector = MLSDDetector(Recorder(lambda x: mlsd_maps()))
    lines = detector(np.zeros((128, 128, 3), np.uint8), resolution=64)[0]
    assert lines[40, 80] == lines[41, 80] == 191 and lines[39, 80] == lines[42, 80] == 64
    assert lines[:39].max() == 0 and lines[43:].max() == 0


TINY_REAL_DETECTORS = {
    "lineart": lambda: LineartDetector(LineartGenerator(LineartConfig(base_channels=4)).eval()),
    "lineart_anime": lambda: LineartAnimeDetector(AnimeLineartUNet(AnimeLineartConfig(base_channels=2)).eval()),
    "mlsd": lambda: MLSDDetector(MLSDModel().eval()),
    "pidinet": lambda: PiDiNetDetector(PiDiNetModel(PiDiNetConfig(channels=4, dilation_channels=4)).eval()),
    "teed": lambda: TEEDDetector(TEEDModel().eval()),
}


@pytest.mark.parametrize("name", sorted(TINY_REAL_DETECTORS))
def test_batches_give_the_same_maps_as_single_frames(name):
    torch.manual_seed(0)
    detector = TINY_REAL_DETECTORS[name]()
    frames = np.random.default_rng(2).integers(0, 256, (3, 41, 59, 3), dtype=np.uint8)
    batched = detector(frames, resolution=64, batch_size=3)  # one forward pass for the three frames
    assert batched.shape == (3, 41, 59) and batched.dtype == np.uint8
    assert np.array_equal(batched[1:2], detector(frames[1], resolution=64))
    assert np.array_equal(batched, detector(frames, resolution=64, batch_size=2))
    assert np.array_equal(batched, detector(frames, resolution=64))  # on the CPU: frame by frame


def test_bad_images_are_rejected():
    detector = TEEDDetector(TEEDModel().eval())
    with pytest.raises(AnnotatorInputError):
        detector(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(AnnotatorInputError):
        detector(np.zeros((10, 10, 2), np.uint8))


def test_cli_runs_new_ids_and_refuses_parameters_an_alias_fixes(published_dir, tmp_path, capsys):
    from PIL import Image

    from annotators.__main__ import main as cli_main

    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert cli_main(["scribble_hed", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--models-dir",
                     str(published_dir), "--resolution", "64", "--safe", "true"]) == 0
    strokes = np.asarray(Image.open(tmp_path / "out.png"))
    assert strokes.shape == (40, 52, 3) and set(np.unique(strokes)) <= {0, 255}
    assert cli_main(["mlsd", str(tmp_path / "in.png"), str(tmp_path / "lines.png"), "--models-dir", str(published_dir),
                     "--resolution", "64", "--score-threshold", "0.5"]) == 0
    with pytest.raises(SystemExit):  # argparse: the alias has no --safe (its id fixes it)
        cli_main(["softedge_pidsafe", str(tmp_path / "in.png"), "--safe", "false"])
    assert "unrecognized arguments: --safe" in capsys.readouterr().err
    assert cli_main(["lineart_anime", str(tmp_path / "in.png"), str(tmp_path / "x.png"), "--models-dir", str(tmp_path)]) == 1
    assert "netG.pth" in capsys.readouterr().err
