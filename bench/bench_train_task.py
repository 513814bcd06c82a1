"""The control is learned: the larger run of the synthetic square task (the CI version is
tests/test_train_learns.py).

    .venv/bin/python bench/bench_train_task.py [--seeds 0 1] [--base-steps 400] [--steps 600] [--lr 1e-3]

Task (controlnet_core.train.synthetic): 8×8 latents (no VAE), a 3×3 square of +1 on −1 at any of the
36 positions; the control map is the square in pixels (64×64). Base: the test suite's tiny SD1 UNet
(diffusers UNet2DConditionModel, 32/64/64 channels, 3M parameters), first trained on the unconditional
task (a square somewhere). ControlNet: built from it by from_unet (zero convs) and trained by
controlnet_core.train.train with the base frozen and 50 % prompt dropout, batch 16, AdamW.

Reported per seed: the noise-prediction loss on a fixed held-out batch (64 examples, fixed noise,
timesteps spread over the schedule) every 50 steps, and for 64 held-out control maps, DDIM samples
(20 steps, same starting noise) without and with the ControlNet, scored by the IoU of the sample's
positive region with the control's square (mean, and the share of samples with IoU > 0.5).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

LATENT, SQUARE = 8, 3


def evaluation_loss(base, control, task, seed: int = 9) -> float:
    from controlnet_core.train import TextCondition, training_loss

    count = task.latents.shape[0]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(task.latents.shape, generator=generator)
    timesteps = torch.linspace(0, base.schedule.num_timesteps - 1, count).long()
    text = TextCondition(context=task.context[1:2].expand(count, -1, -1))
    with torch.no_grad():
        return training_loss(control, base, task.latents, noise, timesteps, text, task.hints.float() / 255).item()


def run(seed: int, base_steps: int, steps: int, lr: float) -> dict:
    from controlnet_core.train import NoiseSchedule, TextCondition, TrainableControlNet, TrainConfig, train
    from controlnet_core.train.diffusers_base import DiffusersBase
    from controlnet_core.train.synthetic import (ddim_sample, make_square_task, pretrain_base, square_dataset,
                                                 square_overlap)
    from tests.factories import make_diffusers_unet, tiny_config

    torch.manual_seed(seed)
    config = tiny_config("sd1")
    schedule = NoiseSchedule.stable_diffusion()
    task = make_square_task(1024, LATENT, SQUARE, config.context_dim, seed=seed)
    unet = make_diffusers_unet("sd1", seed=seed)
    unet.requires_grad_(True)
    started = time.process_time()
    base_losses = pretrain_base(unet, task, schedule, steps=base_steps, batch_size=16, learning_rate=1e-3, seed=seed)
    base_seconds = time.process_time() - started
    base = DiffusersBase(unet, "sd1", schedule)

    held_out = make_square_task(64, LATENT, SQUARE, config.context_dim, seed=1000 + seed)
    held_out.context = task.context
    text = TextCondition(context=task.context[1:2].expand(64, -1, -1))
    hints = held_out.hints.float() / 255
    control = TrainableControlNet.from_base(base, overrides=config.overrides, seed=seed)
    curve = [(0, evaluation_loss(base, control, held_out))]

    def progress(step, total, loss):
        if step % 50 == 0 or step == total:
            curve.append((step, evaluation_loss(base, control, held_out)))

    started = time.process_time()
    result = train(control, base, square_dataset(task),
                   TrainConfig(steps=steps, learning_rate=lr, batch_size=16, prompt_dropout=0.5, seed=seed),
                   progress=progress)
    control_seconds = time.process_time() - started
    shape = (64, 4, LATENT, LATENT)
    without = square_overlap(ddim_sample(base, None, hints, text, shape, steps=20, seed=5), held_out.masks)
    with_control = square_overlap(ddim_sample(base, control, hints, text, shape, steps=20, seed=5), held_out.masks)
    return {"seed": seed, "base_loss_last50": sum(base_losses[-50:]) / len(base_losses[-50:]), "base_cpu_s": base_seconds,
            "control_cpu_s": control_seconds, "curve": curve, "train_losses": result.losses,
            "iou_without": without.mean().item(), "iou_with": with_control.mean().item(),
            "hit_without": (without > 0.5).float().mean().item(), "hit_with": (with_control > 0.5).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        r = run(seed, args.base_steps, args.steps, args.lr)
        print(f"\n== seed {seed}: base trained {args.base_steps} steps (last-50 loss {r['base_loss_last50']:.4f}, "
              f"{r['base_cpu_s']:.0f} s CPU); ControlNet {args.steps} steps at lr {args.lr} ({r['control_cpu_s']:.0f} s CPU)")
        print("held-out loss by step: " + ", ".join(f"{step}: {loss:.4f}" for step, loss in r["curve"]))
        losses = r["train_losses"]
        chunk = max(1, len(losses) // 6)
        print("training loss, mean per sixth: " + ", ".join(f"{sum(losses[i:i + chunk]) / len(losses[i:i + chunk]):.4f}"
                                                            for i in range(0, len(losses), chunk)))
        print(f"IoU with the control's square: without ControlNet {r['iou_without']:.3f} "
              f"(IoU>0.5: {r['hit_without']:.0%}), with {r['iou_with']:.3f} (IoU>0.5: {r['hit_with']:.0%})")


if __name__ == "__main__":
    main()
