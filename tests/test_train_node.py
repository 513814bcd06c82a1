"""The "Train ControlNet" node against the host stub (tests/host/test_host_train.py runs it in a real host).

The stub's MODEL wraps a tiny diffusers UNet in the host UNet's call convention
(x, timesteps, context, y, control={"output": [...], "middle": [...]}); its CLIP and VAE are simple
deterministic stand-ins. The node runs under torch.inference_mode, as the host executes nodes.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from comfy_stub import import_train_nodes
from tests.factories import make_diffusers_unet, make_inputs
from tests.train_factories import write_dataset

import controlnet_core


class HostStyleUNet:
    """Mixin giving a diffusers UNet2DConditionModel the host UNet's call convention and attributes."""

    def forward(self, x, timesteps=None, context=None, y=None, control=None, **kwargs):
        down = mid = None
        if control is not None:
            down, mid = tuple(control["output"]), control["middle"][0]
        return super().forward(x, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid, return_dict=False)[0]

    @property
    def input_blocks(self):
        return self.down_blocks

    @property
    def output_blocks(self):
        return self.up_blocks

    @property
    def out(self):
        return torch.nn.ModuleList([self.conv_norm_out, self.conv_out])


def host_model(seed: int = 1):
    """Built under inference mode, as the host loads models while executing a prompt: every weight is an
    inference tensor with requires_grad left on, which autograd refuses to save for backward."""
    from diffusers import DDPMScheduler

    with torch.inference_mode():
        unet = make_diffusers_unet("sd1", seed=seed)
    assert all(p.is_inference() and p.requires_grad for p in unet.parameters())
    unet.__class__ = type("HostUNet", (HostStyleUNet, type(unet)), {})
    unet.in_channels, unet.channel_mult = 4, (1, 2, 2)
    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    sampling = SimpleNamespace(sigmas=((1 - alphas) / alphas).sqrt())
    base_model = SimpleNamespace(diffusion_model=unet, model_type=SimpleNamespace(name="EPS"),
                                 process_latent_in=lambda latent: latent * 0.18215,
                                 encode_adm=lambda **kwargs: None)
    return SimpleNamespace(model=base_model, load_device="cpu", get_model_object=lambda name: sampling)


class StubVAE:
    def encode(self, pixels):  # B×H×W×3 in [0, 1] -> B×4×H/8×W/8
        pooled = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1) * 4 - 2


class StubCLIP:
    def tokenize(self, text):
        return text

    def encode_from_tokens(self, text, return_pooled=False):
        generator = torch.Generator().manual_seed(sum(map(ord, text)))
        return torch.randn(1, 77, 768, generator=generator), torch.randn(1, 768, generator=generator)


@pytest.fixture
def node_env(monkeypatch, tmp_path):
    module, progress, interrupt = import_train_nodes(monkeypatch, tmp_path)
    dataset = write_dataset(tmp_path / "input" / "my_dataset", count=3, size=(72, 64))
    return SimpleNamespace(module=module, progress=progress, interrupt=interrupt, dataset=dataset,
                           folder=tmp_path / "models" / "controlnet")


def run_node(env, model=None, **overrides):
    inputs = dict(model=model or host_model(), clip=StubCLIP(), vae=StubVAE(), dataset_folder="my_dataset",
                  filename_prefix="trained", steps=2, learning_rate=1e-3, batch_size=2, resolution=64, seed=0)
    inputs.update(overrides)
    with torch.inference_mode():  # as the host executes every node
        return env.module.TrainControlNet().train(**inputs)


def test_node_trains_saves_into_models_controlnet_and_returns_the_controlnet(node_env):
    output = run_node(node_env)
    control_net, name = output["result"]
    assert name == "trained_00001.safetensors" and "saved trained_00001.safetensors" in output["ui"]["text"][0]
    path = node_env.folder / name
    assert type(control_net).__name__ == "PackControl"
    loaded = controlnet_core.load_controlnet(path)
    assert loaded.family == "sd1" and loaded.dtype == torch.float16
    assert all(torch.count_nonzero(z[0].weight) > 0 for z in loaded.zero_convs), "the zero convs did not train"
    assert node_env.progress[-1] == (2, 2)  # the host's progress bar reached the last step
    assert [p.name for p in node_env.folder.iterdir()] == [name]  # no temporary file left
    assert run_node(node_env)["result"][1] == "trained_00002.safetensors"  # never overwrites


def test_host_unet_base_step0_is_bit_identical_and_uses_the_host_control_convention(node_env):
    model = host_model(seed=3)
    base = node_env.module.HostUNetBase(model)
    assert base.family == "sd1" and base.schedule.prediction_type == "epsilon"
    control = node_env.module.TrainableControlNet.from_base(base)
    inputs = make_inputs("sd1", seed=4)
    text = node_env.module.TextCondition(context=inputs.context)
    with torch.no_grad():
        alone = model.model.diffusion_model(inputs.x, inputs.timesteps, inputs.context)
        steered = base.predict(inputs.x, inputs.timesteps, text, control.signal(inputs.x, inputs.timesteps, text,
                                                                                 inputs.hint))
    assert torch.equal(steered, alone)


@pytest.mark.parametrize("overrides,phrase", [
    ({"dataset_folder": "no_such_folder"}, "does not exist"),
    ({"dataset_folder": ""}, "dataset_folder is empty"),
    ({"filename_prefix": "../escape"}, "without folders"),
    ({"resolution": 80}, "multiple of 32"),
    ({"steps": 0}, "steps must be at least 1"),
])
def test_bad_inputs_are_refused_before_anything_is_written(node_env, overrides, phrase):
    with pytest.raises(node_env.module.InputError, match=phrase):
        run_node(node_env, **overrides)
    assert list(node_env.folder.iterdir()) == []


def test_a_model_that_is_not_an_sd_unet_is_refused(node_env):
    flux_like = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)), load_device="cpu")
    with pytest.raises(node_env.module.InputError, match="SD1.x, SD2.x or SDXL model.*Linear"):
        run_node(node_env, model=flux_like)


def test_a_cancelled_run_leaves_nothing(node_env):
    node_env.interrupt.append(True)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_node(node_env)
    assert list(node_env.folder.iterdir()) == []


def test_unpaired_dataset_is_named(node_env):
    (node_env.dataset / "captions" / "sample_01.txt").unlink()
    with pytest.raises(node_env.module.InputError, match="no caption.*sample_01"):
        run_node(node_env)
