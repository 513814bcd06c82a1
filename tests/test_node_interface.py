"""The node interface is a public contract: shared workflow JSON stores class keys, input names, and
widget values by position. This test fails on any accidental change.

Deliberate change: add optional inputs at the END only, never rename a combo value, then regenerate the snapshot with  UPDATE_NODE_SNAPSHOT=1 pytest tests/test_node_interface.py
and commit it with the change. The host test test_host_server.py checks /object_info against the
same snapshot.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

from comfy_stub import import_nodes, import_preprocessor_nodes, import_train_nodes

SNAPSHOT = Path(__file__).parent / "node_interface_snapshot.json"
CONNECTION_TYPES = {"CONDITIONING", "CONTROL_NET", "IMAGE", "MASK", "CONTROLNET_PACK_STACK", "CONTROLNET_PACK_WEIGHTS",
                    "CONTROLNET_PACK_KEYFRAMES", "MODEL", "CLIP", "VAE"}
# Combos listing a models folder: input name -> how many fixed leading values precede the files.
FILE_LIST_INPUTS = {"control_net_name": 0, "unet_weights": 1}


def interface_of(mappings: dict, display_names: dict) -> dict:
    """What a saved workflow depends on: keys, display names, input names/order/types, outputs.
    A file-list combo (models folder contents) is recorded as 'COMBO:<folder files>', not its values."""
    out = {}
    for key, cls in mappings.items():
        spec = cls.INPUT_TYPES()
        inputs = {}
        for section in ("required", "optional"):
            entries = []
            for name, value in spec.get(section, {}).items():
                kind = value[0]
                options = value[1] if len(value) > 1 else {}
                if isinstance(kind, list):
                    if name in FILE_LIST_INPUTS:
                        kind = "COMBO:" + "+".join(kind[:FILE_LIST_INPUTS[name]] + ["files"])
                    else:
                        kind = ["COMBO", *kind]
                entry = {"name": name, "type": kind}
                for option in ("default", "min", "max"):
                    if option in options:
                        entry[option] = options[option]
                entries.append(entry)
            inputs[section] = entries
        out[key] = {"display_name": display_names[key], "inputs": inputs,
                    "outputs": list(cls.RETURN_TYPES), "output_names": list(cls.RETURN_NAMES),
                    "function": cls.FUNCTION}
    return out


@pytest.fixture
def nodes(monkeypatch, tmp_path):
    return import_nodes(monkeypatch, tmp_path)


@pytest.fixture
def all_mappings(monkeypatch, tmp_path):
    """Every node of the pack: the ControlNet, preprocessor, sample, timing and training nodes."""
    preprocessors, _, _ = import_preprocessor_nodes(monkeypatch, tmp_path)
    package = preprocessors.__name__.rsplit(".", 1)[0]
    controlnet = sys.modules[package + ".controlnet_nodes"]
    samples = importlib.import_module(package + ".sample_nodes")
    timing = importlib.import_module(package + ".timing_nodes")
    training, _, _ = import_train_nodes(monkeypatch, tmp_path)
    modules = (controlnet, preprocessors, samples, timing, training)
    return ({key: value for module in modules for key, value in module.NODE_CLASS_MAPPINGS.items()},
            {key: value for module in modules for key, value in module.NODE_DISPLAY_NAME_MAPPINGS.items()})


def test_interface_matches_snapshot(all_mappings):
    current = interface_of(*all_mappings)
    if os.environ.get("UPDATE_NODE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, ensure_ascii=False) + "\n")
    saved = json.loads(SNAPSHOT.read_text())
    assert current == saved, "node interface changed: see this file's docstring before updating the snapshot"


def test_keys_are_namespaced_and_display_names_are_told_apart_from_the_hosts(nodes):
    assert set(nodes.NODE_CLASS_MAPPINGS) == {"ControlNetPack_LoadControlNet", "ControlNetPack_ApplyControlNet",
                                              "ControlNetPack_MultiControlStack"}
    names = set(nodes.NODE_DISPLAY_NAME_MAPPINGS.values())
    assert names == {"Load Control Model (ControlNet Pack)", "Apply Control (ControlNet Pack)",
                     "Multi-Control Stack (ControlNet Pack)"}
    # The host's own nodes are "Load ControlNet Model", "Apply ControlNet" and "Apply ControlNet (OLD)".
    assert not names & {"Load ControlNet Model", "Apply ControlNet", "Apply ControlNet (OLD)"}


def test_every_input_has_a_tooltip_and_every_widget_a_default_and_range(nodes):
    timing = importlib.import_module(nodes.__name__.rsplit(".", 1)[0] + ".timing_nodes")
    for key, cls in {**nodes.NODE_CLASS_MAPPINGS, **timing.NODE_CLASS_MAPPINGS}.items():
        assert cls.DESCRIPTION.strip(), f"{key} has no description"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        for section, entries in cls.INPUT_TYPES().items():
            for name, value in entries.items():
                options = value[1] if len(value) > 1 else {}
                assert options.get("tooltip"), f"{key}.{name} has no tooltip"
                kind = value[0]
                if isinstance(kind, list):
                    assert name == "control_net_name" or options.get("default") in kind, f"{key}.{name}: no default"
                elif kind in ("FLOAT", "INT"):
                    assert {"default", "min", "max", "step"} <= set(options), f"{key}.{name} lacks default/range"
                    assert options["min"] <= options["default"] <= options["max"]
                elif kind in ("BOOLEAN", "STRING"):
                    assert "default" in options, f"{key}.{name} has no default"
                else:
                    assert kind in CONNECTION_TYPES, f"{key}.{name}: unexpected type {kind!r}"
