"""The example workflows (example_workflows/*.json), without a host: what a fresh install needs.

- every input is bundled (no LoadImage: the host's input folder holds none of our files);
- every model file a node names, and every annotator weight file, is listed in the workflow's models
  metadata (name, url, directory: the graph editor reads node `properties.models` and the top-level
  `models`, and offers the downloads);
- links are consistent and the pack's nodes get the widget values their interface expects;
- nodes, title bars included, do not overlap, at sizes no smaller than the editor's own minimum;
- each has a title (the file name is what the host's template browser shows) and a `.jpg` thumbnail.

The host tests run them through /prompt; tests/host/render_examples.py measures them in the real editor.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from annotators import REGISTRY

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
SNAPSHOT = json.loads((REPO_ROOT / "tests" / "node_interface_snapshot.json").read_text())
SAMPLES = REPO_ROOT / "annotators" / "samples"
CONNECTION_TYPES = {"CONDITIONING", "CONTROL_NET", "IMAGE", "MASK", "CONTROLNET_PACK_STACK", "POSE_KEYPOINT",
                    "CONTROLNET_PACK_WEIGHTS", "CONTROLNET_PACK_KEYFRAMES",
                    "MODEL", "CLIP", "VAE", "LATENT"}

# The host nodes the examples use: (title, connection input rows, output rows, widget heights).
# LiteGraph's computeSize: 20 px per slot row, 24 px per widget (a multiline text box: 54), plus 14
# (6 without widgets); the editor enlarges a node smaller than that on load, which could make it overlap.
HOST_NODES = {
    "CheckpointLoaderSimple": ("Load Checkpoint", 0, 3, [24]),
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)", 1, 1, [54]),
    "EmptyLatentImage": ("Empty Latent Image", 0, 1, [24] * 3),
    "KSampler": ("KSampler", 4, 1, [24] * 7),
    "VAEDecode": ("VAE Decode", 2, 1, []),
    "SaveImage": ("Save Image", 1, 0, [24]),
}
FRONTEND_ONLY = {"MarkdownNote", "Note"}
TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: the title bar sits above `pos`
FILE_WIDGETS = {"CheckpointLoaderSimple": "checkpoints", "ControlNetPack_LoadControlNet": "controlnet"}
SAMPLE_WIDGETS = {"ControlNetPack_LoadSampleImage", "ControlNetPack_LoadSamplePose"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def our_shape(node_type: str) -> tuple[str, int, int, list[int]]:
    entry = SNAPSHOT[node_type]
    inputs = [e for section in ("required", "optional") for e in entry["inputs"][section]]
    connections = [e for e in inputs if isinstance(e["type"], str) and e["type"] in CONNECTION_TYPES]
    widgets = [24 for e in inputs if e not in connections]
    return entry["display_name"], len(connections), len(entry["outputs"]), widgets


def minimum_size(node: dict) -> tuple[float, float]:
    """A lower bound of the size the editor gives the node (computeSize)."""
    if node["type"] in FRONTEND_ONLY:
        return 210, 88
    title, rows_in, rows_out, widgets = HOST_NODES.get(node["type"]) or our_shape(node["type"])
    title = node.get("title", title)
    height = 20 * max(rows_in, rows_out) + sum(widgets) + (14 if widgets else 6)
    width = max(210, 7 * len(title) + 60)  # title text at ~6.7 px per character, measured in the editor
    return width, height


def rectangle(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    width, height = node["size"]
    return x, y - TITLE_HEIGHT, x + width, y + height


def test_there_are_examples_with_titles_and_thumbnails():
    assert len(EXAMPLES) >= 2
    for path in EXAMPLES:
        assert " " in path.stem and "_" not in path.stem, f"{path.name}: the file name is the title users see"
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{thumbnail.name} is missing"
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and image.width == 640 and 200 <= image.height <= 640
        assert thumbnail.stat().st_size < 100_000


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_input_is_bundled_and_every_model_is_listed(path):
    workflow = load(path)
    listed = {(m["name"], m["directory"]): m for m in workflow.get("models", [])}
    for node in workflow["nodes"]:
        for model in node.get("properties", {}).get("models", []):
            listed[(model["name"], model["directory"])] = model
    for model in listed.values():
        assert set(model) >= {"name", "url", "directory"}
        assert model["url"].startswith("https://huggingface.co/") and model["url"].split("?")[0].endswith(model["name"])
    needed = set()
    for node in workflow["nodes"]:
        assert node["type"] != "LoadImage", "LoadImage reads the host's input folder, which holds none of our files"
        assert node["type"] in SNAPSHOT or node["type"] in HOST_NODES or node["type"] in FRONTEND_ONLY, node["type"]
        if node["type"] in FILE_WIDGETS:
            name = node["widgets_values"][0]
            needed.add((name, FILE_WIDGETS[node["type"]]))
            # the editor shows a node's own entries when the widget holds their name
            assert name in {m["name"] for m in node.get("properties", {}).get("models", [])}, node["type"]
        if node["type"] in SAMPLE_WIDGETS:
            assert (SAMPLES / node["widgets_values"][0]).is_file(), node["widgets_values"]
        annotator = next((spec for spec in REGISTRY.values()
                          if node["type"] == f"ControlNetPack_{spec.name.title().replace('_', '')}Preprocessor"), None)
        if annotator is not None and annotator.weights and annotator.name != "openpose":
            needed.add((annotator.weights[0].file_name, "annotators"))
    assert needed <= set(listed), f"not in the models metadata: {sorted(needed - set(listed))}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_links_and_widget_values_fit_the_node_interfaces(path):
    workflow = load(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert workflow["version"] == 0.4 and workflow["last_node_id"] >= max(nodes)
    for link_id, source, output, target, slot, kind in workflow["links"]:
        assert nodes[source]["outputs"][output]["type"] == kind and link_id in nodes[source]["outputs"][output]["links"]
        assert nodes[target]["inputs"][slot]["type"] == kind and nodes[target]["inputs"][slot]["link"] == link_id
    for node in nodes.values():
        if node["type"] not in SNAPSHOT:
            continue
        inputs = SNAPSHOT[node["type"]]["inputs"]
        widgets = [e for e in inputs["required"] + inputs["optional"]
                   if not (isinstance(e["type"], str) and e["type"] in CONNECTION_TYPES)]
        required = [e for e in inputs["required"] if e in widgets]
        assert len(required) <= len(node["widgets_values"]) <= len(widgets), node["type"]
        for entry, value in zip(widgets, node["widgets_values"]):
            if isinstance(entry["type"], list) and entry["type"][0] == "COMBO":
                assert value in entry["type"][1:], (node["type"], entry["name"], value)
            elif "min" in entry:
                assert entry["min"] <= value <= entry["max"], (node["type"], entry["name"], value)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_nodes_and_title_bars_do_not_overlap(path):
    nodes = load(path)["nodes"]
    for node in nodes:
        width, height = minimum_size(node)
        assert node["size"][0] >= width and node["size"][1] >= height, \
            f"{node['type']} #{node['id']}: size {node['size']} is below the editor's minimum ~{[width, height]}"
    for index, a in enumerate(nodes):
        ax0, ay0, ax1, ay1 = rectangle(a)
        for b in nodes[index + 1:]:
            bx0, by0, bx1, by1 = rectangle(b)
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, \
                f"{a['type']} #{a['id']} overlaps {b['type']} #{b['id']}"
