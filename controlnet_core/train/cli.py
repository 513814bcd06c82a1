"""`python -m controlnet_core train`: train a ControlNet from a single-file SD1.x / SDXL checkpoint.

    python -m controlnet_core train --base v1-5-pruned-emaonly.safetensors --dataset my_dataset \\
        --output my_controlnet.safetensors --tokenizer ComfyUI/comfy/sd1_tokenizer \\
        --steps 5000 --batch-size 4 --resolution 512

Everything the run needs is checked first (output folder writable, dataset paired and readable,
base checkpoint of a supported family, tokenizer files present); only then are the models loaded.
The encodings cache and the checkpoints go to a work folder beside the output
(`<output>.training/`), so `--resume` continues an interrupted run exactly where it stopped.

`--system controlnext` trains a ControlNeXt module and the base UNet's `to_out` weights instead, as
the released ControlNeXt scripts do (the module at 10× --learning-rate); it writes the module to
--output and the UNet weights' increments beside it (`<output stem>.unet_weight_increments.safetensors`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from ._core import ControlNetError
from .cache import EncodedDataset, HintStore, encode_dataset
from .dataset import fingerprint, scan_dataset
from .loop import GRADIENT_CHECKPOINTING, MIXED_PRECISION, TrainConfig, checkpoints_in, resolve_precision, train
from .output import OutputError, check_output_path
from .schedule import PREDICTION_TYPES, NoiseSchedule
from .sd_checkpoint import (find_tokenizer, guess_prediction_type, inspect_base_checkpoint, load_tokenizers,
                            require_train_dependencies)
from .trainable_controlnext import DEFAULT_SCALE, VARIANT_OF_FAMILY, unet_weights_path

SYSTEMS = ("controlnet", "controlnext")
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CACHE_FILE = "encoded.safetensors"
METADATA_KEY = "controlnet_pack.training"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a ControlNet from an SD1.x/SDXL checkpoint (needs the [train] extra)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    need = parser.add_argument_group("required")
    need.add_argument("--base", required=True, help="single-file SD1.x or SDXL checkpoint (.safetensors / .ckpt)")
    need.add_argument("--dataset", required=True, help="folder with images/, conditioning/ and captions (see README)")
    need.add_argument("--output", required=True, help="the ControlNet file to write (.safetensors)")
    parser.add_argument("--tokenizer", help="folder with CLIP's vocab.json and merges.txt (default: the ComfyUI "
                                            "host's comfy/sd1_tokenizer when the pack is inside ComfyUI)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="AdamW learning rate (the paper's 1e-5)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=512, help="square training size in pixels (default 512)")
    parser.add_argument("--prompt-dropout", type=float, default=0.5, help="share of captions replaced by the empty prompt")
    parser.add_argument("--system", choices=SYSTEMS, default="controlnet",
                        help="controlnet (the paper) or controlnext (module + the UNet's to_out weights, as released)")
    parser.add_argument("--controlnext-scale", type=float, default=DEFAULT_SCALE,
                        help="ControlNeXt: the fixed scale of its feature while training (released default 1.0; "
                             "apply the trained module at this strength)")
    parser.add_argument("--unlock-decoder", action="store_true",
                        help="also train the UNet decoder (the paper's sd_locked=False); writes <output>.unet.safetensors too")
    parser.add_argument("--prediction-type", choices=("auto",) + PREDICTION_TYPES, default="auto",
                        help="auto: v-prediction when the checkpoint has a v_pred marker, else epsilon")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="auto",
                        help="auto: bf16 (else fp16) on a GPU, off on the CPU")
    parser.add_argument("--gradient-checkpointing", choices=GRADIENT_CHECKPOINTING, default="auto",
                        help="auto: on for a GPU, off on the CPU")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 …")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (0: only at the end)")
    parser.add_argument("--keep-checkpoints", type=int, default=1)
    parser.add_argument("--work-dir", help="encodings cache and checkpoints (default: <output>.training/)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the work folder")
    parser.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="fp16", help="dtype of the written file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ControlNetError(f"--device {name}: no CUDA device is available here")
    return device


def _progress_bar(total: int, description: str, unit: str):
    """update(done, total, loss=None) and close(): tqdm (it comes with diffusers), else a line per 10 %."""
    try:
        from tqdm import tqdm
    except ImportError:
        def report(done, _total, loss=None):
            if done == _total or done % max(1, _total // 10) == 0:
                print(f"{description}: {done}/{_total}" + ("" if loss is None else f" loss {loss:.4f}"), file=sys.stderr)
        return report, lambda: None
    bar = tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True)

    def update(done, _total, loss=None):
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}")
    return update, bar.close


def run(args: argparse.Namespace, *, overrides: dict | None = None) -> int:
    """The `train` command. overrides: ControlNetConfig fields for models whose head layout the shapes
    cannot tell (tiny research/test models; real SD1.x/SDXL checkpoints need none)."""
    output = check_output_path(args.output, overwrite=args.overwrite)
    work_dir = Path(args.work_dir).expanduser() if args.work_dir else output.with_name(output.name + ".training")
    examples = scan_dataset(args.dataset)
    info = inspect_base_checkpoint(args.base, overrides=overrides)
    multiple = 8 * 2 ** (len(info.encoder.channel_mult) - 1)
    if args.resolution < multiple or args.resolution % multiple:
        raise ControlNetError(f"--resolution {args.resolution}: expected a positive multiple of {multiple} for this "
                              f"{info.family} model")
    tokenizer = find_tokenizer(args.tokenizer)
    config = TrainConfig(steps=args.steps, learning_rate=args.learning_rate, batch_size=args.batch_size,
                         prompt_dropout=args.prompt_dropout, unlock_decoder=args.unlock_decoder,
                         mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                         seed=args.seed, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints)
    config.validate()
    if work_dir.exists() and not work_dir.is_dir():
        raise OutputError(f"work folder {work_dir} is a file")
    if checkpoints_in(work_dir) and not args.resume:
        raise OutputError(f"work folder {work_dir} holds checkpoints of an earlier run: add --resume to continue it, "
                          "or remove the folder / pass another --work-dir")
    unet_output = output.with_name(output.stem + ".unet.safetensors")
    if args.unlock_decoder:
        check_output_path(unet_output, overwrite=args.overwrite)
    if args.system == "controlnext":
        if args.unlock_decoder:
            raise ControlNetError("--unlock-decoder is a ControlNet option; ControlNeXt trains its own UNet subset "
                                  "(the to_out weights)")
        if info.family not in VARIANT_OF_FAMILY:
            raise ControlNetError(f"--system controlnext: the released ControlNeXt training covers SD1.5 and SDXL "
                                  f"bases; {info.path.name} is {info.family}")
        check_output_path(unet_weights_path(output), overwrite=args.overwrite)
    require_train_dependencies()
    tokenizers = load_tokenizers(info, tokenizer)
    device = _resolve_device(args.device)

    from .diffusers_base import DiffusersBase, DiffusersEncoder
    from .sd_checkpoint import load_base_checkpoint
    from .trainable_controlnet import TrainableControlNet
    from .trainable_controlnext import TrainableControlNeXt

    started = time.time()
    print(f"base: {info.path.name} ({info.family}), {len(examples)} examples, device {device}", file=sys.stderr)
    components = load_base_checkpoint(info, tokenizers)
    prediction = guess_prediction_type(info) if args.prediction_type == "auto" else args.prediction_type
    stat = info.path.stat()
    identity = {"data": fingerprint(examples), "resolution": args.resolution,
                "base": [str(info.path.resolve()), stat.st_size, stat.st_mtime_ns], "tokenizer": str(tokenizer)}
    signature = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    hints = HintStore(examples=examples, resolution=args.resolution)
    data = EncodedDataset.load(work_dir / CACHE_FILE, signature, hints)
    if data is None:
        update, close = _progress_bar(len(examples), "encoding", "image")
        encoder = DiffusersEncoder(components, device)
        try:
            data = encode_dataset(examples, args.resolution, encoder, progress=update)
        finally:
            close()
        work_dir.mkdir(parents=True, exist_ok=True)
        data.save(work_dir / CACHE_FILE, signature)
        del encoder
    components.vae = None
    components.text_encoders = []

    base = DiffusersBase(components.unet, info.family, NoiseSchedule.stable_diffusion(prediction),
                         ldm_names=components.ldm_names, device=device)
    if args.system == "controlnext":
        control = TrainableControlNeXt.from_base(base, scale=args.controlnext_scale, seed=config.seed)
    else:
        control = TrainableControlNet.from_base(base, overrides=overrides, seed=config.seed)
    if args.unlock_decoder:
        base.check_can_save_unet()  # the decoder trains: the UNet stays in full precision
    else:
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(config.mixed_precision, device))
        if half is not None:
            base.cast(half)
    update, close = _progress_bar(config.steps, "training", "step")
    try:
        result = train(control, base, data, config, work_dir=work_dir, resume=args.resume, data_signature=signature,
                       progress=update)
    finally:
        close()
    record = {"system": args.system, "base": info.path.name, "family": info.family, "prediction_type": prediction,
              "steps": result.steps, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
              "resolution": args.resolution, "prompt_dropout": config.prompt_dropout,
              "unlock_decoder": config.unlock_decoder, "seed": config.seed, "examples": len(examples),
              "final_loss": result.losses[-1] if result.losses else None}
    if args.system == "controlnext":
        record["controlnext_scale"] = args.controlnext_scale
    save_dtype = SAVE_DTYPES[args.save_dtype]
    control.save(output, save_dtype, {"format": "pt", METADATA_KEY: json.dumps(record)})
    if args.unlock_decoder:
        base.save_unet(unet_output, save_dtype)
    tail = result.losses[-min(50, len(result.losses)):]
    print(f"wrote {output} after {result.steps} steps in {time.time() - started:.0f} s; mean loss of the last "
          f"{len(tail)} steps {sum(tail) / max(1, len(tail)):.4f}" + (f"; UNet with the trained decoder: {unet_output}"
                                                                       if args.unlock_decoder else "")
          + (f"; its UNet weights: {unet_weights_path(output)} (apply at strength {args.controlnext_scale:g})"
             if args.system == "controlnext" else ""), file=sys.stderr)
    return 0
