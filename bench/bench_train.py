"""Benchmark of one ControlNet training step on the CPU: ours against diffusers' training step.

    .venv/bin/python bench/bench_train.py [--config tiny|sd15|both] [--threads 1] [--blocks 3] [--steps 4]

Both sides train a ControlNet on the same frozen diffusers UNet2DConditionModel with the same batch
(latents, noise, timesteps, text context, control image) and AdamW:

- ours: controlnet_core.train (TrainableControlNet = the pack's ControlNetModel; training_loss: the
  pack's noise schedule, the residuals into the UNet, MSE in float32),
- diffusers: diffusers' ControlNetModel and the step of examples/controlnet/train_controlnet.py
  (DDPMScheduler.add_noise, residuals into the UNet, MSE in float32).

A step is forward + backward + AdamW update + zero_grad. The two ControlNets share their weight
storage (ours is loaded from diffusers' state dict without a copy), so they always hold the same weights. The sides run in alternating blocks of
--steps steps, the order flipping every block; each block starts a fresh optimizer (its first step
allocates the Adam state and is not timed) and ends by freeing it, so only one side's gradients and
optimizer state exist at a time. Step time: median over all timed steps, CPU time (1 intra-op
thread: the process's CPU time is the compute a step needs, little moved by other jobs on the box)
and wall time. Peak memory: the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) during a block minus its resident set just before it: gradients, Adam
state and activations of that side (Linux only).

Configs: tiny = the test suite's tiny SD1 shapes (32/64/64 channels), 64² images, batch 4;
sd15 = full SD1.5 shapes (UNet 860M, ControlNet 361M parameters, random weights), 256² images
(32² latents), batch 1, 77-token context. No GPU figures: this project's machine has none, and no
GPU was lent to this task.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # a script run from anywhere; the package itself uses relative imports
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SD15 = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, use_linear_projection=False,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"))
SD15_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_kib("VmRSS")


def build(config: str):
    from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel

    import controlnet_core
    from controlnet_core.train import NoiseSchedule, TextCondition, TrainableControlNet
    from controlnet_core.train.diffusers_base import DiffusersBase
    from tests.factories import make_diffusers_controlnet, make_diffusers_unet, tiny_config

    generator = torch.Generator().manual_seed(0)
    if config == "tiny":
        unet = make_diffusers_unet("sd1", seed=1)
        reference = make_diffusers_controlnet("sd1", seed=2)
        overrides = tiny_config("sd1").overrides
        batch, latent, tokens = 4, 8, 5
    else:
        unet = UNet2DConditionModel(sample_size=32, up_block_types=SD15_UP, **SD15)
        reference = ControlNetModel.from_unet(unet)
        # Non-zero zero convs and last hint conv, so the whole ControlNet takes part in backward on both sides.
        with torch.no_grad():
            for module in [*reference.controlnet_down_blocks, reference.controlnet_mid_block,
                           reference.controlnet_cond_embedding.conv_out]:
                module.weight.normal_(0, 0.01, generator=generator)
        overrides = None
        batch, latent, tokens = 1, 32, 77
    unet.eval().requires_grad_(False)
    reference.train().requires_grad_(True)
    # Loaded from diffusers' state dict without a copy: the two models share weight storage (saves 1.4 GB
    # at SD1.5 size); each has its own parameters, gradients and optimizer.
    ours = TrainableControlNet(controlnet_core.load_controlnet(reference.state_dict(), overrides=overrides))
    base = DiffusersBase(unet, "sd1", NoiseSchedule.stable_diffusion())
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    batch_inputs = dict(
        x0=torch.randn(batch, 4, latent, latent, generator=generator),
        noise=torch.randn(batch, 4, latent, latent, generator=generator),
        timesteps=torch.randint(0, 1000, (batch,), generator=generator),
        context=torch.randn(batch, tokens, 768, generator=generator),
        hint=torch.rand(batch, 3, latent * 8, latent * 8, generator=generator))
    text = TextCondition(context=batch_inputs["context"])

    def our_loss():
        from controlnet_core.train import training_loss

        return training_loss(ours, base, batch_inputs["x0"], batch_inputs["noise"], batch_inputs["timesteps"], text,
                             batch_inputs["hint"])

    def diffusers_loss():
        noisy = scheduler.add_noise(batch_inputs["x0"], batch_inputs["noise"], batch_inputs["timesteps"])
        down, mid = reference(noisy, batch_inputs["timesteps"], encoder_hidden_states=batch_inputs["context"],
                              controlnet_cond=batch_inputs["hint"], return_dict=False)
        prediction = unet(noisy, batch_inputs["timesteps"], encoder_hidden_states=batch_inputs["context"],
                          down_block_additional_residuals=[s.to(torch.float32) for s in down],
                          mid_block_additional_residual=mid.to(torch.float32), return_dict=False)[0]
        return F.mse_loss(prediction.float(), batch_inputs["noise"].float(), reduction="mean")

    return {"ours": (ours.parameters(), our_loss), "diffusers": (list(reference.parameters()), diffusers_loss)}, {
        "ControlNet parameters": sum(p.numel() for p in ours.parameters()),
        "UNet parameters": sum(p.numel() for p in unet.parameters()), "batch": batch, "image": latent * 8}


def run_block(parameters, loss_fn, steps: int) -> tuple[list[float], list[float], float, float]:
    """`steps` training steps with a fresh AdamW; returns CPU and wall time of steps 2.., the peak extra
    memory in MiB and the last loss."""
    before = _reset_peak()
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    cpu, wall = [], []
    loss = float("nan")
    for step in range(steps):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        value = loss_fn()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = value.item()
        if step:
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started_wall)
    peak = (_status_kib("VmHWM") - before) / 1024
    del optimizer
    gc.collect()
    return cpu, wall, peak, loss


def bench(config: str, blocks: int, steps: int) -> None:
    sides, info = build(config)
    with torch.no_grad():
        losses = {name: loss_fn().item() for name, (_, loss_fn) in sides.items()}
    results = {name: {"cpu": [], "wall": [], "peak": [], "loss": []} for name in sides}
    order = list(sides)
    for block in range(blocks):
        for name in (order if block % 2 == 0 else order[::-1]):
            parameters, loss_fn = sides[name]
            cpu, wall, peak, loss = run_block(parameters, loss_fn, steps)
            results[name]["cpu"] += cpu
            results[name]["wall"] += wall
            results[name]["peak"].append(peak)
            results[name]["loss"].append(loss)
    print(f"\n== {config}: {info}, {blocks} blocks x {steps} steps per side, {torch.get_num_threads()} thread(s)")
    print(f"{'':10} {'s/step CPU':>11} {'steps/s CPU':>12} {'s/step wall':>12} {'peak MiB':>9}  spread CPU (min-max)")
    medians = {}
    for name, r in results.items():
        cpu, wall, peak = statistics.median(r["cpu"]), statistics.median(r["wall"]), statistics.median(r["peak"])
        medians[name] = (cpu, wall, peak)
        print(f"{name:10} {cpu:11.4f} {1 / cpu:12.2f} {wall:12.4f} {peak:9.0f}  {min(r['cpu']):.4f}-{max(r['cpu']):.4f}")
    (oc, ow, op), (dc, dw, dp) = medians["ours"], medians["diffusers"]
    print(f"ratio ours/diffusers: step time CPU {oc / dc:.2f}x, wall {ow / dw:.2f}x; peak memory {op / dp:.2f}x")
    print(f"same batch, same weights, before training: loss ours {losses['ours']:.7f}, diffusers {losses['diffusers']:.7f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "sd15", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="steps per block (the first is not timed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()} (no GPU lent to this task)")
    for config in (("tiny", "sd15") if args.config == "both" else (args.config,)):
        bench(config, args.blocks if config == "sd15" else max(args.blocks, 6),
              args.steps if config == "sd15" else max(args.steps, 10))


if __name__ == "__main__":
    main()
