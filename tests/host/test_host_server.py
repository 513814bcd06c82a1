"""The pack inside a running ComfyUI server (subprocess, --cpu, private base directory).

The pack sits in custom_nodes/ under an odd folder name; the models are full-size SD1.5 shapes
with random weights; generation is 256×256 (latent 32×32) with 1–2 steps to stay within minutes.
"""
from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import host_env

EXAMPLES = sorted((host_env.REPO_ROOT / "example_workflows").glob("*.json"))
SNAPSHOT = host_env.REPO_ROOT / "tests" / "node_interface_snapshot.json"
OURS = "ControlNetPack_"
CHECKPOINT = host_env.MODEL_FILES["checkpoint"][1]
POSE = host_env.MODEL_FILES["pose"][1]
DEPTH = host_env.MODEL_FILES["depth"][1]
SDXL = host_env.MODEL_FILES["sdxl"][1]
LATENT_TOLERANCE = 1e-4  # relative max difference of the final latent (residuals agree to 1e-5)


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_pack_loads_without_import_errors(server, object_info):
    log = server.log()
    assert "IMPORT FAILED" not in log or host_env.PACK_FOLDER_NAME not in log.split("IMPORT FAILED")[1][:400], log
    assert f"Cannot import {server.base}" not in log
    ours = {key for key in object_info if key.startswith(OURS)}
    assert {f"{OURS}ApplyControlNet", f"{OURS}LoadControlNet", f"{OURS}MultiControlStack"} <= ours
    assert any(path.endswith("/js/controlnet_pack.js") for path in server.get("/extensions"))  # WEB_DIRECTORY


def test_object_info_schemas_match_the_snapshot(object_info):
    snapshot = json.loads(SNAPSHOT.read_text())
    for key, expected in snapshot.items():
        info = object_info[key]
        assert info["display_name"] == expected["display_name"]
        assert info["description"].strip()
        assert info["output"] == expected["outputs"] and info["output_name"] == expected["output_names"]
        for section in ("required", "optional"):
            served = info["input"].get(section, {})
            assert list(served) == [entry["name"] for entry in expected["inputs"][section]], f"{key} {section}"
            for entry in expected["inputs"][section]:
                kind, options = served[entry["name"]][0], served[entry["name"]][1]
                assert options.get("tooltip"), f"{key}.{entry['name']} has no tooltip in /object_info"
                if isinstance(entry["type"], str) and entry["type"].startswith("COMBO:"):
                    # a models-folder list, after any fixed leading values ("none+files")
                    fixed = entry["type"][len("COMBO:"):].split("+")[:-1]
                    assert kind[:len(fixed)] == fixed and POSE in kind and DEPTH in kind  # through folder_paths
                elif isinstance(entry["type"], list):
                    assert kind == entry["type"][1:]
                else:
                    assert kind == entry["type"]


# ---- API prompts ------------------------------------------------------------------------------

def base_prompt(steps: int = 2, batch: int = 1, seed: int = 7) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a dancer on a stage"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "pose_image": {"class_type": "LoadImage", "inputs": {"image": "example_pose.png"}},
        "depth_image": {"class_type": "LoadImage", "inputs": {"image": "example_depth.png"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": batch}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": "latents/t"}},
    }


def with_host_controls(prompt: dict, controls: list[tuple[str, str, float]]) -> dict:
    """Chain the host's ControlNetLoader + ControlNetApplyAdvanced for each (file, image node, strength)."""
    positive, negative = ["pos", 0], ["neg", 0]
    for index, (name, image, strength) in enumerate(controls):
        prompt[f"host_load_{index}"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
        prompt[f"host_apply_{index}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": [f"host_load_{index}", 0],
            "image": [image, 0], "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
        positive, negative = [f"host_apply_{index}", 0], [f"host_apply_{index}", 1]
    prompt["sampler"]["inputs"].update(positive=positive, negative=negative)
    return prompt


def with_our_apply(prompt: dict, name: str, image: str, strength: float, **extra) -> dict:
    prompt["our_load"] = {"class_type": f"{OURS}LoadControlNet", "inputs": {"control_net_name": name}}
    prompt["our_apply"] = {"class_type": f"{OURS}ApplyControlNet", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["our_load", 0], "image": [image, 0],
        "strength": strength, "start_percent": 0.0, "end_percent": 1.0, **extra}}
    prompt["sampler"]["inputs"].update(positive=["our_apply", 0], negative=["our_apply", 1])
    return prompt


def with_our_stack(prompt: dict, controls: list[tuple[str, str, float]]) -> dict:
    inputs = {"positive": ["pos", 0], "negative": ["neg", 0]}
    for slot in (1, 2, 3):
        inputs.update({f"enabled_{slot}": slot <= len(controls), f"strength_{slot}": 1.0,
                       f"start_percent_{slot}": 0.0, f"end_percent_{slot}": 1.0, f"control_mode_{slot}": "balanced"})
    for slot, (name, image, strength) in enumerate(controls, start=1):
        prompt[f"our_load_{slot}"] = {"class_type": f"{OURS}LoadControlNet", "inputs": {"control_net_name": name}}
        inputs.update({f"control_net_{slot}": [f"our_load_{slot}", 0], f"image_{slot}": [image, 0],
                       f"strength_{slot}": strength})
    prompt["our_stack"] = {"class_type": f"{OURS}MultiControlStack", "inputs": inputs}
    prompt["sampler"]["inputs"].update(positive=["our_stack", 0], negative=["our_stack", 1])
    return prompt


def latent_of(server, result: dict) -> torch.Tensor:
    assert result["ok"], result["error"]
    saved = result["outputs"]["save"]["latents"][0]
    path = Path(server.base) / "output" / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["latent_tensor"]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_ksampler_latent_matches_host_apply_node(server):
    host = latent_of(server, server.run_prompt(with_host_controls(base_prompt(steps=1), [(POSE, "pose_image", 0.9)])))
    ours = latent_of(server, server.run_prompt(with_our_apply(base_prompt(steps=1), POSE, "pose_image", 0.9)))
    plain = latent_of(server, server.run_prompt(base_prompt(steps=1)))
    assert relative_difference(ours, plain) > 100 * LATENT_TOLERANCE  # the control does change the result
    assert relative_difference(ours, host) <= LATENT_TOLERANCE


def test_pose_depth_stack_matches_two_chained_host_nodes(server):
    controls = [(POSE, "pose_image", 0.9), (DEPTH, "depth_image", 0.6)]
    host = latent_of(server, server.run_prompt(with_host_controls(base_prompt(steps=1), controls)))
    ours = latent_of(server, server.run_prompt(with_our_stack(base_prompt(steps=1), controls)))
    assert relative_difference(ours, host) <= LATENT_TOLERANCE


def listed_models(workflow: dict) -> list[dict]:
    """The workflow's models metadata: the top-level list and each node's properties.models."""
    entries = list(workflow.get("models", []))
    entries += [entry for node in workflow["nodes"] for entry in node.get("properties", {}).get("models", [])]
    return entries


@pytest.fixture(scope="module")
def example_models(server, host_weights) -> None:
    """Random-weight stand-ins, under the names and in the folders the examples' models metadata gives,
    and only those: a file an example needs but does not list is missing and fails its run."""
    stand_ins = {"checkpoints": lambda name: host_weights["checkpoint"],
                 "controlnet": lambda name: host_weights["pose" if "openpose" in name else "depth"],
                 "annotators": lambda name: random_annotator_weights(name)}
    for workflow in EXAMPLES:
        for entry in listed_models(json.loads(workflow.read_text())):
            folder = Path(server.base) / "models" / entry["directory"]
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / entry["name"]).exists():
                (folder / entry["name"]).symlink_to(stand_ins[entry["directory"]](entry["name"]))


def random_annotator_weights(name: str) -> Path:
    """A random-weight file of the published architecture for an annotator weight file (cached)."""
    path = host_env.WEIGHTS_CACHE / f"random_{name}"
    if not path.exists():
        from annotators.depth_anything_v2 import WEIGHT_FILE, DepthAnythingV2

        assert name == WEIGHT_FILE, f"no stand-in for annotator weights {name!r}"
        torch.save(DepthAnythingV2.random(seed=0).model.state_dict(), path)
    return path


@pytest.mark.parametrize("workflow", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_runs_as_shipped_through_the_http_api(server, object_info, example_models, workflow):
    """The example as a fresh install gets it: no input images (the pose and photo are bundled), the
    models its metadata lists. Only the size and the step count are cut (512², 20 steps on a CPU
    would take minutes), through the API prompt, exactly as a user could."""
    graph = json.loads(workflow.read_text())
    prompt = host_env.ui_to_api(graph, object_info)
    assert any(node["class_type"].startswith(OURS) for node in prompt.values())
    assert not any(node["class_type"] == "LoadImage" for node in prompt.values()), "needs an uploaded image"
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=256, height=256)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 1
    result = server.run_prompt(prompt)
    assert result["ok"], result["error"]
    assert any("images" in output for output in result["outputs"].values())


def bad_prompts() -> dict[str, tuple[dict, str]]:
    """name -> (prompt, a phrase the error message must contain)."""
    missing = with_our_apply(base_prompt(steps=1), "no_such_controlnet.safetensors", "pose_image", 1.0)
    sdxl = with_our_apply(base_prompt(steps=1), SDXL, "pose_image", 1.0)
    odd_mask = with_our_apply(base_prompt(steps=1), POSE, "pose_image", 1.0, mask=["odd_mask", 0])
    odd_mask["odd_mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 72, "height": 40}}
    batch = with_our_apply(base_prompt(steps=1, batch=4), POSE, "three_images", 1.0)
    batch["three_images"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["pose_image", 0], "amount": 3}}
    return {"missing model file": (missing, "no_such_controlnet.safetensors"),
            "SDXL ControlNet on SD1.5": (sdxl, "does not fit the base model"),
            "mask of another size": (odd_mask, "mask is 40×72"),
            "image batch 3 for latent batch 4": (batch, "batch of 3 does not pair with the latent batch of 4")}


def test_bad_input_fails_the_prompt_clearly_and_the_next_prompt_runs(server):
    for name, (prompt, phrase) in bad_prompts().items():
        result = server.run_prompt(prompt)
        assert not result["ok"], f"{name}: the prompt should fail"
        assert phrase in result["error"], f"{name}: unclear error {result['error'][:600]}"
    assert "control could not be applied" not in server.log()
    good = server.run_prompt(with_our_apply(base_prompt(steps=1), POSE, "pose_image", 1.0))
    assert good["ok"], good["error"]


def test_preprocessor_nodes_run_in_the_host_with_a_preview(server):
    from PIL import Image

    prompt = {
        "photo": {"class_type": f"{OURS}LoadSampleImage", "inputs": {"sample": "coffee.png"}},
        "edges": {"class_type": f"{OURS}Preprocessor",
                  "inputs": {"image": ["photo", 0], "preprocessor": "canny", "resolution": 256}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["edges", 0], "filename_prefix": "maps/canny"}},
    }
    result = server.run_prompt(prompt)
    assert result["ok"], result["error"]
    assert result["outputs"]["edges"]["images"], "the control map is previewed on the node"
    saved = result["outputs"]["save"]["images"][0]
    with Image.open(Path(server.base) / "output" / saved["subfolder"] / saved["filename"]) as image:
        assert image.size == (600, 400)  # the input's own size (coffee.png), detected at 256
        assert set(np.unique(np.asarray(image)).tolist()) <= {0, 255}  # canny stays black and white

    # A neural type without its weights fails the prompt naming the file and the folder; the next prompt runs.
    prompt["edges"]["inputs"]["preprocessor"] = "openpose"
    missing = server.run_prompt(prompt)
    assert not missing["ok"]
    assert "body_pose_model.pth" in missing["error"] and "annotators" in missing["error"], missing["error"][:600]
    prompt["edges"]["inputs"]["preprocessor"] = "lines"
    assert server.run_prompt(prompt)["ok"]


def test_web_extension_imports_resolve_on_the_server(server):
    """Each relative import of the front-end files must reach a real file where the host serves them
    (a wrong number of '../' loads nothing and the UI only logs 'Error loading extension')."""
    listed = [path for path in server.get("/extensions") if path.endswith("/js/controlnet_pack.js")]
    assert listed, "the pack's web extension is not listed by the host"
    source = (host_env.REPO_ROOT / "web" / "js" / "controlnet_pack.js").read_text()
    imports = re.findall(r'^import .* from "([^"]+)";', source, flags=re.M)
    assert imports
    for target in imports:
        resolved = urllib.parse.urljoin(server.url + listed[0], target)
        with urllib.request.urlopen(resolved, timeout=30) as response:
            assert response.status == 200, resolved


def test_neural_preprocessors_are_loaded_and_freed_by_the_hosts_model_manager(server, example_models):
    """Depth Anything V2 goes through the host's load_models_gpu (the host logs each load request):
    loaded once, kept while nothing needs the room, unloaded by the host's /free with every other
    model, and loaded again by the next run."""
    prompt = {
        "photo": {"class_type": f"{OURS}LoadSampleImage", "inputs": {"sample": "chelsea.png"}},
        "depth": {"class_type": f"{OURS}DepthAnythingV2Preprocessor", "inputs": {"image": ["photo", 0], "resolution": 140}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["depth", 0], "filename_prefix": "maps/depth"}},
    }

    def run_with_resolution(resolution: int) -> int:
        prompt["depth"]["inputs"]["resolution"] = resolution  # a new input each time: the host re-runs the node
        result = server.run_prompt(prompt)
        assert result["ok"], result["error"]
        return server.log().count("Requested to load AnnotatorModels")

    def free_everything() -> None:
        status, _ = server.post("/free", {"unload_models": True, "free_memory": True})
        assert status == 200
        time.sleep(1)  # the host's worker wakes on the flag and unloads before it takes the next prompt

    free_everything()
    loads = server.log().count("Requested to load AnnotatorModels")
    assert run_with_resolution(140) == loads + 1  # the host loaded it
    assert run_with_resolution(154) == loads + 1  # still loaded: the host kept it, no new request
    free_everything()
    assert run_with_resolution(168) == loads + 2  # the host had unloaded it; loaded again
