"""`python -m controlnet_core train` on tiny single-file SD1 / SDXL checkpoints, offline.

- The base is read back exactly: UNet, VAE and text encoders built from the single file give the
  outputs of the diffusers / transformers models the file was written from (the oracle).
- The written ControlNet loads in the pack and in diffusers (ControlNetModel.from_single_file, local
  config only) with the same residuals, and it was trained (its zero convs are no longer zero).
- Bad input (issue proof 6): unpaired / unreadable / mismatched datasets, a base checkpoint of
  the wrong kind, an output that cannot be written: a clear error naming the problem, exit code 1,
  and nothing written (neither the output file nor the work folder).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import controlnet_core
from controlnet_core.__main__ import main
from controlnet_core.train import cli
from tests.factories import make_diffusers_controlnet, make_inputs, tiny_config
from tests.train_factories import make_tiny_base, write_dataset, write_tiny_base, write_tiny_tokenizer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    models = {name: make_tiny_base(name, seed=40) for name in ("sd1", "sdxl")}
    return {
        "root": root, "models": models,
        "sd1": write_tiny_base(root / "sd1_base.safetensors", models["sd1"]),
        "sdxl": write_tiny_base(root / "sdxl_base.safetensors", models["sdxl"]),
        "tokenizer": write_tiny_tokenizer(root / "tokenizer"),
        "dataset": write_dataset(root / "dataset", count=3, size=(80, 64)),
    }


def args_for(files, output: Path, *extra: str, base: str = "sd1") -> list[str]:
    return ["train", "--base", str(files[base]), "--dataset", str(files["dataset"]), "--output", str(output),
            "--tokenizer", str(files["tokenizer"]), "--resolution", "64", "--batch-size", "2", *extra]


def run_train(argv: list[str], overrides: dict | None = None) -> int:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return cli.run(parser.parse_args(argv), overrides=overrides)


# ---- the base is read back exactly -----------------------------------------------------------------

def assert_same_output(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same weights bit for bit, yet not always the same bits out: MKL's float32 GEMM result depends on
    where the operands lie in memory (seen here: a 96×96 Linear on a transposed input gives 7e-7 apart
    for two bit-identical copies of its weight). 1e-5 of the output's scale covers that rounding and
    nothing else (a wrong weight or config shows up as O(1) differences)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_single_file_base_builds_the_models_it_was_written_from(files, name):
    from controlnet_core.train.diffusers_base import DiffusersEncoder
    from controlnet_core.train.sd_checkpoint import inspect_base_checkpoint, load_base_checkpoint, load_tokenizers

    originals = files["models"][name]
    info = inspect_base_checkpoint(files[name], overrides=tiny_config(name).overrides)
    assert info.family == name
    components = load_base_checkpoint(info, load_tokenizers(info, files["tokenizer"]))
    inputs = make_inputs(name, seed=41)
    with torch.no_grad():
        expected = originals["unet"](inputs.x, inputs.timesteps, inputs.context,
                                     added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False)[0]
        actual = components.unet(inputs.x, inputs.timesteps, inputs.context,
                                 added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False)[0]
        assert_same_output(actual, expected)
        pixels = torch.rand(2, 3, 64, 64) * 2 - 1
        expected_latent = originals["vae"].encode(pixels).latent_dist
        mean, std = DiffusersEncoder(components).encode_images(pixels)
        assert_same_output(mean, expected_latent.mean * components.vae.config.scaling_factor)
        assert_same_output(std, expected_latent.std * components.vae.config.scaling_factor)

        encoder = DiffusersEncoder(components)
        prompts = ["a red square", ""]
        context, y, extras = encoder.encode_prompts(prompts, 64)
        ids = [encoder._token_ids(t, prompts) for t in components.tokenizers]
        start, end = components.tokenizers[0].bos_token_id, components.tokenizers[0].eos_token_id
        assert ids[0][0, 0].item() == start and ids[0][1, 1].item() == end and ids[0][1, -1].item() == end
        if name == "sd1":
            assert_same_output(context, originals["text_encoders"][0](ids[0]).last_hidden_state)
            assert y is None and extras == {}
        else:
            first = originals["text_encoders"][0](ids[0], output_hidden_states=True).hidden_states[-2]
            second = originals["text_encoders"][1](ids[1], output_hidden_states=True)
            assert_same_output(context, torch.cat([first, second.hidden_states[-2]], dim=-1))
            assert_same_output(extras["text_embeds"], second.text_embeds)
            assert ids[1][0, -1].item() == 0  # open_clip pads with token 0
            assert y.shape == (2, 2816) and torch.equal(y[:, :1280], extras["text_embeds"])


# ---- training writes a file the pack and diffusers load --------------------------------------------

def diffusers_controlnet_from_file(path: Path, name: str, config_dir: Path):
    """diffusers' own single-file loader, offline: the architecture from a local config.json."""
    from diffusers import ControlNetModel

    make_diffusers_controlnet(name).save_config(config_dir)
    return ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True).eval()


def test_train_command_writes_a_controlnet_the_pack_and_diffusers_load(files, tmp_path, capsys):
    output = tmp_path / "trained.safetensors"
    status = main(args_for(files, output, "--steps", "3", "--learning-rate", "1e-3", "--save-dtype", "fp32"))
    assert status == 0, capsys.readouterr().err
    assert oct(output.stat().st_mode & 0o777) != "0o600"  # not left private like a temporary file
    with safe_open(str(output), "pt") as handle:
        record = json.loads(handle.metadata()[cli.METADATA_KEY])
        assert all(not k.startswith(("control_model.", "model.")) for k in handle.keys())
    assert record["steps"] == 3 and record["family"] == "sd1" and record["prediction_type"] == "epsilon"

    ours = controlnet_core.load_controlnet(output, overrides=tiny_config("sd1").overrides)
    assert ours.family == "sd1"
    assert all(torch.count_nonzero(z[0].weight) > 0 for z in ours.zero_convs), "the zero convs did not train"
    reference = diffusers_controlnet_from_file(output, "sd1", tmp_path / "config")
    inputs = make_inputs("sd1", seed=42)
    with torch.no_grad():
        residuals = ours(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
        down, mid = reference(inputs.x, inputs.timesteps, inputs.context, inputs.hint, return_dict=False)
    assert residuals.mid.abs().max() > 0
    for a, b in zip(residuals.down + [residuals.mid], list(down) + [mid]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))
    work = tmp_path / "trained.safetensors.training"
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-0000003.pt", "encoded.safetensors"]

    # Continue the run: the cached encodings are read back, training resumes at step 3.
    status = main(args_for(files, output, "--steps", "4", "--learning-rate", "1e-3", "--resume", "--overwrite"))
    assert status == 0, capsys.readouterr().err
    assert "after 4 steps" in capsys.readouterr().err


def test_sdxl_checkpoint_trains_an_sdxl_controlnet(files, tmp_path):
    """Also the GPU path's settings, on the CPU: the frozen UNet held in bf16 under autocast."""
    output = tmp_path / "sdxl.safetensors"
    argv = args_for(files, output, "--steps", "1", "--mixed-precision", "bf16", base="sdxl")
    assert run_train(argv, tiny_config("sdxl").overrides) == 0
    identity = controlnet_core.identify(output)
    assert (identity.system, identity.family) == ("ControlNet", "sdxl")


def test_controlnext_command_writes_the_module_and_its_unet_weights(files, tmp_path, capsys):
    from controlnet_core.train.trainable_controlnext import unet_weights_path

    output = tmp_path / "controlnext.safetensors"
    argv = args_for(files, output, "--system", "controlnext", "--steps", "2", "--learning-rate", "1e-4",
                    "--controlnext-scale", "0.5")
    assert main(argv) == 0, capsys.readouterr().err
    companion = unet_weights_path(output)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted([output.name, companion.name])
    with safe_open(str(output), "pt") as handle:
        record = json.loads(handle.metadata()[cli.METADATA_KEY])
    assert record["system"] == "controlnext" and record["controlnext_scale"] == 0.5 and record["steps"] == 2
    loaded = controlnet_core.load_controlnext(output, unet_weights=companion)
    assert loaded.config.variant == "sd15"
    to_out = [k for k in files["models"]["sd1"]["unet"].state_dict() if "to_out" in k]
    patches = loaded.unet_weight_patches()
    assert len(patches) == len(to_out) and {how for how, _ in patches.values()} == {"diff"}
    assert any(delta.abs().max() > 0 for _, delta in patches.values()), "the UNet subset did not train"

    refused = tmp_path / "refused"
    refused.mkdir()
    bad = args_for(files, refused / "x.safetensors", "--system", "controlnext", "--unlock-decoder", "--steps", "1")
    assert main(bad) == 1
    assert "--unlock-decoder is a ControlNet option" in capsys.readouterr().err
    assert list(refused.iterdir()) == []


def test_unlocked_decoder_trains_the_unet_decoder_and_saves_the_unet(files, tmp_path):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors.torch import load_file

    output = tmp_path / "unlocked.safetensors"
    assert main(args_for(files, output, "--steps", "1", "--learning-rate", "1e-3", "--unlock-decoder",
                         "--save-dtype", "fp32")) == 0
    saved = load_file(str(tmp_path / "unlocked.unet.safetensors"))
    original = files["models"]["sd1"]["unet"]
    converted = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in saved.items()},
                                            dict(original.config))
    unet = UNet2DConditionModel.from_config(original.config)
    unet.load_state_dict(converted, strict=True)
    changed = {k for k, v in unet.state_dict().items() if not torch.equal(v, original.state_dict()[k])}
    assert changed and all(k.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for k in changed)
    assert any(k.startswith("conv_out.") for k in changed)


# ---- bad input: a clear error and nothing written -----------------------------------------------

def assert_refused(files, output: Path, capsys, phrase: str, *extra: str, base: str = "sd1", **kwargs) -> str:
    argv = args_for(files, output, "--steps", "1", *extra, base=base)
    if kwargs.get("dataset"):
        argv[argv.index("--dataset") + 1] = str(kwargs["dataset"])
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert phrase in message, message
    assert not output.exists()
    assert not output.with_name(output.name + ".training").exists()
    if output.parent.is_dir():  # no temporary file left either
        assert not [p.name for p in output.parent.iterdir() if p.name.startswith(".")]
    return message


def clone_dataset(files, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(files["dataset"], tmp_path / "dataset"))


def test_unpaired_dataset_is_refused(files, tmp_path, capsys):
    dataset = clone_dataset(files, tmp_path)
    (dataset / "conditioning" / "sample_01.png").unlink()
    (dataset / "captions" / "sample_02.txt").unlink()
    message = assert_refused(files, tmp_path / "a.safetensors", capsys, "not paired by file name",
                             dataset=dataset)
    assert "no control map" in message and "sample_01" in message
    assert "no caption" in message and "sample_02" in message


def test_unreadable_image_is_refused(files, tmp_path, capsys):
    dataset = clone_dataset(files, tmp_path)
    (dataset / "images" / "sample_00.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    message = assert_refused(files, tmp_path / "a.safetensors", capsys, "not readable", dataset=dataset)
    assert "sample_00.png" in message


def test_image_and_control_map_of_different_sizes_are_refused(files, tmp_path, capsys):
    from PIL import Image

    dataset = clone_dataset(files, tmp_path)
    Image.new("RGB", (70, 64)).save(dataset / "conditioning" / "sample_01.png")
    message = assert_refused(files, tmp_path / "a.safetensors", capsys, "differ in size", dataset=dataset)
    assert "sample_01 (image 80×64, control map 70×64)" in message


WRONG_BASES = {
    "SD3": ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2, 2)},
            "a Stable Diffusion 3 checkpoint"),
    "Flux": ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, "a Flux diffusion model"),
    "ControlNet": ({"zero_convs.0.0.weight": torch.zeros(2, 2), "input_blocks.0.0.weight": torch.zeros(2, 2)},
                   "a ControlNet"),
    "UNet only": ({"input_blocks.0.0.weight": torch.zeros(2, 2)}, "a UNet-only file"),
}


@pytest.mark.parametrize("kind", list(WRONG_BASES))
def test_base_checkpoint_of_the_wrong_kind_is_refused(files, tmp_path, capsys, kind):
    tensors, phrase = WRONG_BASES[kind]
    path = tmp_path / f"{kind}.safetensors"
    save_file(tensors, str(path))
    files = dict(files, wrong=path)
    message = assert_refused(files, tmp_path / "a.safetensors", capsys, phrase, base="wrong")
    assert "SD1.x or SDXL" in message


def test_base_of_an_unsupported_family_is_refused(files, tmp_path, capsys):
    """An SD2-family UNet (context 1024): the command trains SD1.x and SDXL."""
    from tests.factories import make_diffusers_unet
    from tests.train_factories import unet_to_ldm

    state = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(make_diffusers_unet("sd2")).items()}
    path = tmp_path / "sd2.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    files = dict(files, sd2_file=path)
    message = assert_refused(files, tmp_path / "a.safetensors", capsys, "SD2 model", base="sd2_file")
    assert "supports SD1 and SDXL" in message


def test_unwritable_output_is_refused(files, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert_refused(files, blocker / "out.safetensors", capsys, "is not a folder")
    assert_refused(files, tmp_path / "missing" / "out.safetensors", capsys, "does not exist")
    assert_refused(files, tmp_path / "out.ckpt", capsys, "expected a .safetensors file name")
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"keep me")
    assert main(args_for(files, existing, "--steps", "1")) == 1
    assert "already exists" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert_refused(files, locked / "out.safetensors", capsys, "not writable")


def test_missing_tokenizer_files_are_named(files, tmp_path, capsys):
    empty = tmp_path / "empty_tokenizer"
    empty.mkdir()
    argv = args_for(files, tmp_path / "a.safetensors", "--steps", "1")
    argv[argv.index("--tokenizer") + 1] = str(empty)
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert "vocab.json, merges.txt" in message and not (tmp_path / "a.safetensors").exists()
