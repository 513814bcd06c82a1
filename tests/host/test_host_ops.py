"""The pack's models on the host's own layer classes (comfy.ops), in process.

- LoadControlNet builds every layer from the operations the host picks for this device
  (comfy.ops.pick_operations), as the host's ControlNet loader does;
- with the host's manual_cast operations the weights stay in fp16 storage and are cast per layer:
  the result equals the fp32 model's bit for bit (fp16 → fp32 is exact);
- the host's low-VRAM partial load (ModelPatcher.load with a memory budget) leaves most layers to
  be cast per call, and the residuals stay bit-identical.
"""
from __future__ import annotations

import pytest
import torch

import host_env


@pytest.fixture(scope="module")
def setup(comfy_path, host_weights):
    import comfy.ops
    import folder_paths

    folder_paths.add_model_folder_path("controlnet", str(host_weights["pose"].parent))
    pack = host_env.import_pack_in_process()
    return pack, comfy.ops, host_weights


def residuals(core, model) -> list[torch.Tensor]:
    image = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 32, 32, generator=generator), torch.randn(2, 77, 768, generator=generator)
    stack = core.ControlStack([core.ControlEntry(model, image)])
    with torch.inference_mode():
        added = stack.contributions(x, torch.tensor([500.0, 500.0]), context, chunk_kinds=[0, 1])
    return [added.skips[i] for i in sorted(added.skips)] + [added.middle]


def test_loader_builds_every_layer_from_the_hosts_operations(setup):
    pack, ops, files = setup
    loaded = pack.nodes.controlnet_nodes.LoadControlNet().load(files["t2i_full"].name)[0].source
    weighted = [m for m in loaded.model.modules() if list(m.parameters(recurse=False))]
    assert weighted and all(hasattr(m, "comfy_cast_weights") for m in weighted)  # host op classes throughout


def test_fp16_storage_cast_per_layer_equals_fp32(setup):
    pack, ops, files = setup
    core = pack.controlnet_core
    cast = core.load_control(str(files["pose"]), dtype=torch.float16, operations=ops.manual_cast,
                             compute_dtype=torch.float32)
    assert {p.dtype for p in cast.parameters()} == {torch.float16}
    plain = core.load_control(str(files["pose"]), dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(residuals(core, cast), residuals(core, plain)))


def test_low_vram_partial_load_casts_layers_per_call_and_keeps_results(setup):
    pack, ops, files = setup
    core, control_object = pack.controlnet_core, pack.nodes.control_object
    reference = residuals(core, core.load_control(str(files["pose"]), dtype=torch.float32))
    model = core.load_control(str(files["pose"]), dtype=torch.float32, operations=ops.disable_weight_init)
    loaded = control_object.wrap_model(model, "pose", torch.device("cpu"))
    budget = sum(p.numel() * p.element_size() for p in model.parameters()) // 4
    loaded.patcher.load(torch.device("cpu"), lowvram_model_memory=budget, force_patch_weights=False, full_load=False)
    castable = [m for m in model.modules() if hasattr(m, "comfy_cast_weights")]
    cast_per_call = [m for m in castable if m.comfy_cast_weights]
    assert len(cast_per_call) > len(castable) // 2  # most layers did not fit the budget
    assert all(torch.equal(a, b) for a, b in zip(residuals(core, model), reference))
