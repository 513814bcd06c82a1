"""The annotator table (parameters, defaults, ranges, weights) and the command line built from it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotators import REGISTRY, AnnotatorInputError, MissingWeightsError, annotator_names, get_spec, run_annotator
from annotators.__main__ import main as cli_main
from annotators.registry import INPUT_DEPTH, INPUT_IMAGE, INPUT_LABELS, INPUT_POSE

NEURAL = [name for name, spec in REGISTRY.items() if spec.weights]
CLASSICAL = [
    name for name, spec in REGISTRY.items() if not spec.weights and not spec.requires and spec.input_kind != INPUT_POSE
]


def sample_input(name: str, batch: int = 2) -> tuple[np.ndarray, dict]:
    """A small batch of the input kind the annotator takes, plus the extra keyword arguments it needs."""
    rng = np.random.default_rng(0)
    spec = get_spec(name)
    if spec.input_kind == INPUT_LABELS:
        return rng.integers(0, 150, (batch, 37, 53)), {}
    if spec.input_kind == INPUT_DEPTH:
        return rng.random((batch, 37, 53, 1)).astype(np.float32), {}
    images = rng.random((batch, 37, 53, 3)).astype(np.float32)
    extra = {"mask": rng.random((batch, 37, 53)) > 0.5} if spec.needs_mask else {}
    return images, extra


def test_every_parameter_has_help_a_valid_default_and_a_range():
    for spec in REGISTRY.values():
        assert spec.description and spec.display_name
        for param in spec.params:
            assert param.help, (spec.name, param.name)
            assert param.validate(param.default) == param.default
            if param.kind in ("int", "float"):
                assert param.minimum is not None and param.maximum is not None and param.step
                assert param.minimum <= param.default <= param.maximum
                with pytest.raises(AnnotatorInputError, match=param.name):
                    param.validate(param.maximum + 1)
            if param.kind == "choice":
                assert param.default in param.choices
                with pytest.raises(AnnotatorInputError, match="expected one of"):
                    param.validate("no such choice")


@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_annotators_run_by_name_with_their_defaults_and_report_progress(name):
    inputs, extra = sample_input(name, batch=3)
    seen = []
    result = run_annotator(name, inputs, on_progress=lambda done, total: seen.append((done, total)), **extra)
    assert result.images.shape == (3, 37, 53, 3)
    assert seen[-1] == (3, 3)
    floats = result.as_float()
    assert floats.dtype == np.float32 and floats.max() <= 1.0


def test_long_batches_run_in_chunks_with_progress_and_per_frame_masks():
    frames = np.random.default_rng(1).random((37, 20, 24, 3)).astype(np.float32)
    masks = np.zeros((37, 20, 24), bool)
    masks[30, 5:10, 5:10] = True  # only frame 30 is masked: the chunking must keep masks with their frames
    seen = []
    result = run_annotator("inpaint", frames, mask=masks, on_progress=lambda d, t: seen.append(d))
    assert seen == [16, 32, 37]
    assert (result.images[30, 5:10, 5:10] == -1).all() and (result.images[:30] >= 0).all()


def test_unknown_annotators_parameters_and_bad_values_are_named():
    images, _ = sample_input("canny")
    with pytest.raises(AnnotatorInputError, match="'sobel'"):
        run_annotator("sobel", images)
    with pytest.raises(AnnotatorInputError, match="unknown parameter 'low'"):
        run_annotator("canny", images, low=3)
    with pytest.raises(AnnotatorInputError, match="high_threshold"):
        run_annotator("canny", images, high_threshold="lots")
    with pytest.raises(AnnotatorInputError, match="resolution"):
        run_annotator("canny", images, resolution=8)
    with pytest.raises(AnnotatorInputError, match="takes no mask"):
        run_annotator("canny", images, mask=np.ones((37, 53)))


@pytest.mark.parametrize("name", NEURAL)
def test_neural_annotators_without_weights_name_the_missing_file_and_folder(name, tmp_path):
    """Every neural annotator the registry lists must import: an import error fails here, never skips."""
    spec = get_spec(name)
    with pytest.raises(MissingWeightsError) as error:
        run_annotator(name, np.zeros((1, 32, 32, 3), np.uint8), models_dir=str(tmp_path))
    assert spec.weights[0].file_name in str(error.value) and str(tmp_path) in str(error.value)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_annotator_module_imports(name):
    assert callable(get_spec(name).load())


def test_cli_lists_every_annotator(capsys):
    assert cli_main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in annotator_names():
        assert name in listed


def test_cli_runs_an_annotator_on_a_file_with_parameters(tmp_path, capsys):
    photo = np.zeros((41, 67, 3), np.uint8)
    photo[10:30, 20:50] = 255
    Image.fromarray(photo).save(tmp_path / "in.png")
    assert cli_main(["canny", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--low-threshold", "50",
                     "--l2-gradient", "true", "--resolution", "128"]) == 0
    edges = np.asarray(Image.open(tmp_path / "out.png"))
    assert edges.shape == (41, 67, 3) and edges[10:30, 18:22].max() > 0 and edges[15:25, 25:45].max() == 0


def test_cli_uses_the_bundled_sample_when_no_input_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["blur", "--sigma", "2"]) == 0
    produced = Image.open(tmp_path / "blur.png")
    sample = Image.open(Path(__file__).resolve().parents[1] / "annotators" / "samples" / get_spec("blur").sample)
    assert produced.size == sample.size


def test_cli_inpaint_takes_the_mask_from_transparency(tmp_path):
    rgba = np.full((20, 30, 4), 255, np.uint8)
    rgba[5:10, 5:10, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "hole.png")
    assert cli_main(["inpaint", str(tmp_path / "hole.png"), str(tmp_path / "hint.png")]) == 0
    hint = np.asarray(Image.open(tmp_path / "hint.png"))
    assert (hint[5:10, 5:10] == 0).all() and (hint[12:, 12:] == 255).all()


def test_cli_rejects_bad_input_with_a_message(tmp_path, capsys):
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    assert cli_main(["canny", str(tmp_path / "deep.png"), str(tmp_path / "o.png")]) == 1
    assert "16-bit" in capsys.readouterr().err
    assert cli_main(["canny", str(tmp_path / "missing.png"), str(tmp_path / "o.png")]) == 1
    assert "no file" in capsys.readouterr().err
    (tmp_path / "text.png").write_text("not an image")
    assert cli_main(["canny", str(tmp_path / "text.png"), str(tmp_path / "o.png")]) == 1
    assert "could not read" in capsys.readouterr().err
    assert cli_main(["canny", "--low-threshold", "999"]) == 1
    assert "low_threshold" in capsys.readouterr().err
    assert cli_main(["no_such_annotator"]) == 2
    assert not (tmp_path / "o.png").exists()


def test_cli_renders_a_label_png(tmp_path):
    labels = np.zeros((10, 12), np.uint8)
    labels[:, 6:] = 12
    Image.fromarray(labels).save(tmp_path / "labels.png")
    assert cli_main(["segmentation", str(tmp_path / "labels.png"), str(tmp_path / "seg.png")]) == 0
    seg = np.asarray(Image.open(tmp_path / "seg.png"))
    assert (seg[:, :6] == (120, 120, 120)).all() and (seg[:, 6:] == (150, 5, 61)).all()


def two_frames_of_one_person(height: int = 60, width: int = 80) -> list[dict]:
    body = []
    for index in range(18):  # a vertical row of keypoints, in pixels
        body += [width / 2, 5 + index * 2.5, 1.0]
    return [{"people": [{"pose_keypoints_2d": body}], "canvas_height": height, "canvas_width": width}] * 2


def test_pose_render_by_name_draws_at_the_canvas_size_and_passes_keypoints_on(tmp_path):
    frames = two_frames_of_one_person()
    result = run_annotator("pose_render", frames)
    assert result.images.shape == (2, 60, 80, 3) and result.images.max() > 0
    assert len(result.pose_keypoints) == 2
    (tmp_path / "pose.json").write_text(json.dumps(frames[:1]))
    assert cli_main(["pose_render", str(tmp_path / "pose.json"), str(tmp_path / "pose.png")]) == 0
    assert Image.open(tmp_path / "pose.png").size == (80, 60)
    (tmp_path / "bad.json").write_text('{"people": 3}')
    assert cli_main(["pose_render", str(tmp_path / "bad.json"), str(tmp_path / "bad.png")]) == 1


# ---- resolution 0 and sizes that cannot be processed ------------------------------------------

RESOLUTION_USERS = [name for name, spec in REGISTRY.items() if spec.uses_resolution]


@pytest.mark.parametrize("name", [n for n in RESOLUTION_USERS if n in CLASSICAL])
def test_resolution_0_detects_at_the_inputs_own_size(name):
    """0 means 'the input's own size': the same map as asking for the input's short side (70)."""
    images = np.random.default_rng(2).random((1, 70, 93, 3)).astype(np.float32)
    own = run_annotator(name, images, resolution=0).images
    assert own.shape == (1, 70, 93, 3)
    assert np.array_equal(own, run_annotator(name, images, resolution=70).images)
    assert not np.array_equal(own, run_annotator(name, images, resolution=140).images)


def test_resolution_values_between_1_and_63_are_refused_with_the_rule():
    images, _ = sample_input("canny")
    for bad in (1, 63, -5, 16385):
        with pytest.raises(AnnotatorInputError, match="resolution"):
            run_annotator("canny", images, resolution=bad)
    with pytest.raises(AnnotatorInputError, match=r"0 \(detect at the input's own size\)"):
        run_annotator("canny", images, resolution=8)


def test_cli_accepts_resolution_0(tmp_path):
    photo = np.zeros((41, 67, 3), np.uint8)
    photo[10:30, 20:50] = 255
    Image.fromarray(photo).save(tmp_path / "in.png")
    assert cli_main(["canny", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--resolution", "0"]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (41, 67, 3)


@pytest.mark.parametrize("name", RESOLUTION_USERS)
def test_extreme_aspect_ratios_are_refused_before_anything_is_allocated(name, tmp_path):
    """3×700 at resolution 512 would need a 512×119467 detection image (HED: tens of GB). Every
    annotator that detects at a resolution refuses it with the sizes and the way out, before it
    loads weights (the weights folder here is empty) or allocates the detection image."""
    import tracemalloc

    spec = get_spec(name)
    extra = {"mask": np.ones((3, 700), bool)} if spec.needs_mask else {}
    tracemalloc.start()
    try:
        with pytest.raises(AnnotatorInputError) as info:
            run_annotator(name, np.zeros((1, 3, 700, 3), np.uint8), resolution=512, models_dir=str(tmp_path), **extra)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "3×700" in message and "512×119467" in message and "16384" in message
    assert "resolution of at most 70" in message  # 16384 · 3 / 700
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    missing = [package for package in spec.requires if importlib.util.find_spec(package) is None]
    if not spec.weights and not missing:  # the resolution the message suggests runs (optional packages installed)
        assert run_annotator(name, np.zeros((1, 3, 700, 3), np.uint8), resolution=70, **extra).images.shape[1:3] == (3, 700)


def test_the_shared_fit_refuses_the_size_too():
    """The check lives in fit_to_resolution, which every detector calls (also when called directly)."""
    from annotators import fit_to_resolution
    from annotators.common.image import MAX_DETECTION_SIDE, check_detection_size

    assert check_detection_size(1, 32, 512) == (512, MAX_DETECTION_SIDE)  # exactly at the limit
    with pytest.raises(AnnotatorInputError, match="512×16896"):
        fit_to_resolution(np.zeros((1, 33), np.uint8), 512)
    with pytest.raises(AnnotatorInputError, match=r"at its own size \(resolution 0\)"):
        check_detection_size(10, MAX_DETECTION_SIDE + 1, 0)
