"""Train ControlNet inside a running ComfyUI server, then the saved file in the host's sampling.

The node trains 2 steps (64² images, learning rate 1e-3 so the zero convs move visibly) on the
full-size SD1.5-shaped random checkpoint through /prompt, as a user's graph would: CheckpointLoaderSimple
→ Train ControlNet. The file it writes to models/controlnet is then loaded by the host's own
ControlNetLoader + ControlNetApplyAdvanced and by the pack's LoadControlNet + ApplyControlNet: one
KSampler step with each must give the same latent (within the tolerance of the other host tests), and
both must differ from sampling without the control: the trained file changes the host's sampling
exactly as it does in the pack.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_host_server import (LATENT_TOLERANCE, OURS, base_prompt, latent_of, relative_difference,
                              with_host_controls, with_our_apply)

DATASET = "train_set"


@pytest.fixture(scope="module")
def dataset(server):
    folder = server.base / "input" / DATASET
    for sub in ("images", "conditioning", "captions"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / "images" / f"s{index}.png")
        control = np.zeros((64, 80, 3), np.uint8)
        control[8:40, 8 + 30 * index:40 + 30 * index] = 255
        Image.fromarray(control).save(folder / "conditioning" / f"s{index}.png")
        (folder / "captions" / f"s{index}.txt").write_text(f"a white square, number {index}")
    return folder


def train_prompt(dataset_folder: str, prefix: str) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": base_prompt()["ckpt"]["inputs"]["ckpt_name"]}},
        "train": {"class_type": f"{OURS}TrainControlNet", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "dataset_folder": dataset_folder,
            "filename_prefix": prefix, "steps": 2, "learning_rate": 1e-3, "batch_size": 1, "resolution": 64,
            "seed": 0, "prompt_dropout": 0.5}},
    }


def test_trained_file_changes_host_sampling_as_it_does_in_the_pack(server, dataset):
    folder = server.base / "models" / "controlnet"
    result = server.run_prompt(train_prompt(DATASET, "host_trained"))
    assert result["ok"], result["error"]
    name = "host_trained_00001.safetensors"
    assert (folder / name).is_file()
    assert any(name in text for text in result["outputs"]["train"]["text"])

    host = latent_of(server, server.run_prompt(with_host_controls(base_prompt(steps=1), [(name, "pose_image", 1.0)])))
    ours = latent_of(server, server.run_prompt(with_our_apply(base_prompt(steps=1), name, "pose_image", 1.0)))
    plain = latent_of(server, server.run_prompt(base_prompt(steps=1)))
    assert relative_difference(ours, plain) > 100 * LATENT_TOLERANCE, "the trained ControlNet changed nothing"
    assert relative_difference(ours, host) <= LATENT_TOLERANCE


def test_bad_dataset_fails_the_prompt_clearly_and_writes_nothing(server, dataset):
    folder = server.base / "models" / "controlnet"
    before = sorted(p.name for p in folder.iterdir())
    result = server.run_prompt(train_prompt("no_such_dataset", "never_written"))
    assert not result["ok"] and "does not exist" in result["error"], result["error"][:600]
    (dataset / "captions" / "s1.txt").rename(dataset / "s1.txt.away")
    try:
        result = server.run_prompt(train_prompt(DATASET, "never_written"))
        assert not result["ok"] and "no caption" in result["error"] and "s1" in result["error"], result["error"][:600]
    finally:
        (dataset / "s1.txt.away").rename(dataset / "captions" / "s1.txt")
    assert sorted(p.name for p in folder.iterdir()) == before
    assert server.run_prompt(base_prompt(steps=1))["ok"]  # the server still works
