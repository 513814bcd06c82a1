"""Bad weight files, for both readers (annotators and controlnet_core): what the user reads.

torch.load(weights_only=True) explains a refused or unreadable pickle by suggesting to re-run with
`weights_only=False`, which would run the file's code. That advice must never reach a user: not in
the message, not in the chained traceback. Keys saved under another prefix get a hint naming it.
"""
from __future__ import annotations

import os
import pickle
import traceback
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from annotators.common import AnnotatorInputError
from annotators.common.checkpoint import prefix_hint
from annotators.hed import HEDModel, load_hed_model
from annotators.openpose import BodyPoseModel, load_body_model, to_published_layout
from controlnet_core import CheckpointError, load_controlnet
from tests.factories import save_state_dict, with_prefix

# Words of torch's unsafe advice; none may appear anywhere in what a user sees.
UNSAFE_WORDS = ("weights_only", "trusted source", "arbitrary code", "safe_globals", "trust the source")


class RunsCode:
    """Unpickling this calls os.makedirs(marker): a folder that appears proves the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word the message must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, good)
    data = good.read_bytes()
    files = {}
    files["random bytes"] = (folder / "random.pth", "refused")
    files["random bytes"][0].write_bytes(bytes(range(256)) * 8)
    files["truncated zip"] = (folder / "truncated.pth", "truncated")
    files["truncated zip"][0].write_bytes(data[: len(data) // 2])
    assert zipfile.is_zipfile(good) and not zipfile.is_zipfile(files["truncated zip"][0])
    legacy = folder / "legacy.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, legacy, _use_new_zipfile_serialization=False)
    files["truncated legacy pickle"] = (folder / "legacy_truncated.pth", "truncated")
    files["truncated legacy pickle"][0].write_bytes(legacy.read_bytes()[:40])
    files["text"] = (folder / "text.pth", "corrupt")
    files["text"][0].write_text("not a checkpoint at all\n")
    files["code-running pickle (torch.save)"] = (folder / "code.pth", "refused")
    torch.save({"conv.weight": RunsCode(folder / "ran")}, files["code-running pickle (torch.save)"][0])
    files["code-running pickle (plain pickle)"] = (folder / "code_plain.pth", "refused")
    with open(files["code-running pickle (plain pickle)"][0], "wb") as handle:
        pickle.dump({"conv.weight": RunsCode(folder / "ran")}, handle, protocol=2)
    return files


def what_the_user_sees(error: BaseException) -> str:
    """The message and the whole printed traceback, chained exceptions included."""
    return str(error) + "\n" + "".join(traceback.format_exception(error))


def load_with(reader: str, path: Path):
    if reader == "annotators":
        return load_hed_model(path)
    return load_controlnet(path)


@pytest.mark.parametrize("reader", ["annotators", "controlnet_core"])
def test_bad_pth_files_never_pass_on_torchs_unsafe_advice(reader, tmp_path):
    expected_error = AnnotatorInputError if reader == "annotators" else CheckpointError
    for name, (path, word) in bad_files(tmp_path / reader).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the legacy pickle protocol
            with pytest.raises(expected_error) as caught:
                load_with(reader, path)
        seen = what_the_user_sees(caught.value)
        for unsafe in UNSAFE_WORDS:
            assert unsafe not in seen, f"{reader}, {name}: {unsafe!r} reached the user:\n{seen}"
        assert path.name in str(caught.value), f"{reader}, {name}: the file is not named"
        assert word in str(caught.value), f"{reader}, {name}: {caught.value}"
    assert not (tmp_path / reader / "ran").exists(), "a pickle's code ran"


def test_a_refused_pickle_names_the_object_it_wanted_to_build(tmp_path):
    files = bad_files(tmp_path)
    path = files["code-running pickle (torch.save)"][0]
    with pytest.raises(AnnotatorInputError, match=r"Python object \(os\.makedirs\)"):
        load_hed_model(path)
    with pytest.raises(CheckpointError, match=r"Python object \(os\.makedirs\)"):
        load_controlnet(path)
    assert not (tmp_path / "ran").exists()


# ---- keys under another prefix --------------------------------------------------------------------

def test_an_extra_prefix_on_every_key_is_named(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ControlNetHED.pth"
    torch.save(with_prefix(HEDModel().state_dict(), "model0."), path)
    with pytest.raises(AnnotatorInputError) as caught:
        load_hed_model(path)
    message = str(caught.value)
    assert "Only the key prefix differs" in message and "extra prefix 'model0.'" in message
    assert "e.g. 'model0." in message


def test_a_missing_prefix_and_a_swapped_prefix_are_named():
    expected = ["pretrained.blocks.0.attn.qkv.weight", "pretrained.norm.weight", "pretrained.cls_token"]
    lacking = [key.removeprefix("pretrained.") for key in expected]
    assert "lack the prefix 'pretrained.'" in prefix_hint(lacking, expected)
    swapped = ["backbone." + key for key in lacking]
    assert "start with 'backbone.' where 'pretrained.' is expected" in prefix_hint(swapped, expected)


def test_per_block_wrapper_prefixes_are_listed(tmp_path):
    """pytorch-openpose's own module saves its layers as model0.conv1_1, model1_1.conv5_1_CPM_L1, ...
    where the published file has conv1_1, conv5_1_CPM_L1: the hint lists the leading parts."""
    torch.manual_seed(0)
    published = to_published_layout(BodyPoseModel())
    stage_of = {}
    for key in published:
        layer = key.split(".")[0]
        if layer.startswith(("conv1", "conv2", "conv3", "conv4")):
            stage_of[key] = "model0."
        elif "_stage" in layer:
            stage_of[key] = f"model{layer.split('_stage')[1][0]}_{layer[-1]}."
        else:
            stage_of[key] = f"model1_{layer[-1]}."
    path = tmp_path / "body_pose_model.pth"
    torch.save({stage_of[key] + key: tensor for key, tensor in published.items()}, path)
    with pytest.raises(AnnotatorInputError) as caught:
        load_body_model(path)
    message = str(caught.value)
    assert "Only the key prefixes differ" in message and "'model0.'" in message and "'model1_1.'" in message


def test_unrelated_keys_get_no_prefix_hint():
    assert prefix_hint(["a.weight", "b.bias"], ["c.weight", "d.bias"]) is None
    assert prefix_hint(["x.norm", "y.weight"], ["p.norm", "q.weight"]) is None  # one-word tails, two prefixes
    assert prefix_hint(["conv.weight"], ["conv.weight", "conv.bias"]) is None  # a key is simply missing


def test_weights_saved_from_a_data_parallel_wrapper_load(tmp_path):
    """torch DataParallel/DDP prefix every key with 'module.': both readers take such files as is."""
    from controlnet_core.checkpoint_io import read_state_dict, read_tensor_shapes

    state = {"zero_convs.0.0.weight": torch.ones(4, 4, 1, 1), "input_blocks.0.0.bias": torch.zeros(4)}
    for suffix in (".safetensors", ".pth"):
        path = save_state_dict(with_prefix(state, "module."), tmp_path / f"ddp{suffix}")
        assert read_state_dict(path).keys() == state.keys()
        assert read_tensor_shapes(path) == {key: (tuple(value.shape), value.dtype) for key, value in state.items()}
    partly = save_state_dict({"module.a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "partly.safetensors")
    assert set(read_state_dict(partly)) == {"module.a", "b"}  # only a prefix on every key is a wrapper's
    torch.manual_seed(0)
    hed_state = HEDModel().state_dict()
    torch.save(with_prefix(hed_state, "module."), tmp_path / "hed.pth")
    assert torch.equal(load_hed_model(tmp_path / "hed.pth").block1.convs[0].weight, hed_state["block1.convs.0.weight"])
