"""The control is learned: the larger run of the synthetic square task (the CI version is
tests/test_train_learns.py), for ControlNet and for ControlNeXt on the same base, with steps to a
target loss.

    .venv/bin/python bench/bench_train_task.py [--seeds 0 1] [--systems controlnet controlnext]
        [--base-steps 400] [--steps 600] [--lr 1e-3] [--controlnext-lr 1e-4]

Task (controlnet_core.train.synthetic): 8×8 latents (no VAE), a 3×3 square of +1 on −1 at any of the
36 positions; the control map is the square in pixels (64×64). Base: the test suite's tiny SD1 UNet
(diffusers UNet2DConditionModel, 32/64/64 channels, 3M parameters), first trained on the unconditional
task (a square somewhere). Then, each from a copy of that same base, trained by
controlnet_core.train.train with 50 % prompt dropout, batch 16, AdamW, the same data order and noise:

- ControlNet: built from it by from_unet (zero convs), base frozen, everything at --lr;
- ControlNeXt: the released module (3.5M parameters, feature width 32 here) and the UNet's `to_out`
  weights, as released: the module at 10 × --controlnext-lr, the UNet subset at --controlnext-lr,
  scale 1.

Reported per seed and system: the noise-prediction loss on a fixed held-out batch (64 examples, fixed
noise, timesteps spread over the schedule) every 25 steps; the steps until that loss first falls to
90 / 80 / 75 / 70 % of the base's own held-out loss (the base alone, no control); and for 64 held-out
control maps, DDIM samples (20 steps, same starting noise) without and with the control, scored by the
IoU of the sample's positive region with the control's square (mean, and the share with IoU > 0.5).
"""
from __future__ import annotations

import argparse
import copy
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
        if control is None:  # the base alone
            x_t = base.schedule.add_noise(task.latents, noise, timesteps)
            prediction = base.predict(x_t, timesteps, text, None)
            return torch.nn.functional.mse_loss(prediction, base.schedule.target(task.latents, noise, timesteps)).item()
        return training_loss(control, base, task.latents, noise, timesteps, text, task.hints.float() / 255).item()


TARGETS = (0.9, 0.8, 0.75, 0.7)
EVERY = 25


def pretrained_base(seed: int, base_steps: int):
    from controlnet_core.train import NoiseSchedule
    from controlnet_core.train.synthetic import make_square_task, pretrain_base
    from tests.factories import make_diffusers_unet, tiny_config

    torch.manual_seed(seed)
    config = tiny_config("sd1")
    schedule = NoiseSchedule.stable_diffusion()
    task = make_square_task(1024, LATENT, SQUARE, config.context_dim, seed=seed)
    unet = make_diffusers_unet("sd1", seed=seed)
    unet.requires_grad_(True)
    started = time.process_time()
    losses = pretrain_base(unet, task, schedule, steps=base_steps, batch_size=16, learning_rate=1e-3, seed=seed)
    return unet, schedule, task, {"base_loss_last50": sum(losses[-50:]) / len(losses[-50:]),
                                  "base_cpu_s": time.process_time() - started}


def run(system: str, seed: int, unet, schedule, task, steps: int, lr: float) -> dict:
    from controlnet_core.train import TextCondition, TrainableControlNet, TrainableControlNeXt, TrainConfig, train
    from controlnet_core.train.diffusers_base import DiffusersBase
    from controlnet_core.train.synthetic import ddim_sample, make_square_task, square_dataset, square_overlap
    from tests.factories import tiny_config

    config = tiny_config("sd1")
    base = DiffusersBase(copy.deepcopy(unet), "sd1", schedule)  # ControlNeXt trains part of it
    held_out = make_square_task(64, LATENT, SQUARE, config.context_dim, seed=1000 + seed)
    held_out.context = task.context
    text = TextCondition(context=task.context[1:2].expand(64, -1, -1))
    hints = held_out.hints.float() / 255
    if system == "controlnet":
        control = TrainableControlNet.from_base(base, overrides=config.overrides, seed=seed)
    else:
        control = TrainableControlNeXt.from_base(base, seed=seed)
    base_alone = evaluation_loss(base, None, held_out)
    curve = [(0, evaluation_loss(base, control, held_out))]

    def progress(step, total, loss):
        if step % EVERY == 0 or step == total:
            curve.append((step, evaluation_loss(base, control, held_out)))

    started = time.process_time()
    result = train(control, base, square_dataset(task),
                   TrainConfig(steps=steps, learning_rate=lr, batch_size=16, prompt_dropout=0.5, seed=seed),
                   progress=progress)
    control_seconds = time.process_time() - started
    reached = {target: next((step for step, loss in curve if loss <= target * base_alone), None)
               for target in TARGETS}
    shape = (64, 4, LATENT, LATENT)
    frozen = DiffusersBase(copy.deepcopy(unet), "sd1", schedule)  # the base before any training
    without = square_overlap(ddim_sample(frozen, None, hints, text, shape, steps=20, seed=5), held_out.masks)
    with_control = square_overlap(ddim_sample(base, control, hints, text, shape, steps=20, seed=5), held_out.masks)
    parameters = sum(p.numel() for p in control.parameters())
    return {"system": system, "seed": seed, "lr": lr, "parameters": parameters, "control_cpu_s": control_seconds,
            "base_alone": base_alone, "curve": curve, "reached": reached, "train_losses": result.losses,
            "iou_without": without.mean().item(), "iou_with": with_control.mean().item(),
            "hit_without": (without > 0.5).float().mean().item(), "hit_with": (with_control > 0.5).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--systems", nargs="+", choices=("controlnet", "controlnext"),
                        default=["controlnet", "controlnext"])
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3, help="ControlNet learning rate")
    parser.add_argument("--controlnext-lr", type=float, default=1e-4,
                        help="ControlNeXt's UNet subset learning rate (its module trains at 10x)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        unet, schedule, task, pretraining = pretrained_base(seed, args.base_steps)
        print(f"\n== seed {seed}: base trained {args.base_steps} steps (last-50 loss "
              f"{pretraining['base_loss_last50']:.4f}, {pretraining['base_cpu_s']:.0f} s CPU)", flush=True)
        for system in args.systems:
            lr = args.lr if system == "controlnet" else args.controlnext_lr
            r = run(system, seed, unet, schedule, task, args.steps, lr)
            rows.append(r)
            print(f"-- {system}: {r['parameters']:,} trained parameters, {args.steps} steps at lr {lr:g} "
                  f"({r['control_cpu_s']:.0f} s CPU, {r['control_cpu_s'] / args.steps:.2f} s/step); "
                  f"base alone held-out loss {r['base_alone']:.4f}")
            print("held-out loss by step: " + ", ".join(f"{step}: {loss:.4f}" for step, loss in r["curve"]))
            print("steps to held-out loss <= " + ", ".join(
                f"{t:.0%} of base: {r['reached'][t] if r['reached'][t] is not None else f'>{args.steps}'}"
                for t in TARGETS))
            losses = r["train_losses"]
            chunk = max(1, len(losses) // 6)
            print("training loss, mean per sixth: " + ", ".join(
                f"{sum(losses[i:i + chunk]) / len(losses[i:i + chunk]):.4f}" for i in range(0, len(losses), chunk)))
            print(f"IoU with the control's square: without control {r['iou_without']:.3f} "
                  f"(IoU>0.5: {r['hit_without']:.0%}), with {r['iou_with']:.3f} (IoU>0.5: {r['hit_with']:.0%})",
                  flush=True)
    print("\n| seed | system | trained parameters | " + " | ".join(f"steps to {t:.0%}" for t in TARGETS)
          + " | held-out loss at the end (base alone) | IoU with control | CPU s/step |")
    print("|---|---|---:|" + "---:|" * len(TARGETS) + "---|---:|---:|")
    for r in rows:
        reached = " | ".join(str(r["reached"][t]) if r["reached"][t] is not None else "—" for t in TARGETS)
        print(f"| {r['seed']} | {r['system']} | {r['parameters']:,} | {reached} | {r['curve'][-1][1]:.4f} "
              f"({r['base_alone']:.4f}) | {r['iou_with']:.3f} | {r['control_cpu_s'] / len(r['train_losses']):.2f} |")


if __name__ == "__main__":
    main()
