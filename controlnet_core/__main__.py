"""`python -m controlnet_core inspect FILE…`: what a control file is, without loading its weights.

The first line of each report is the system's common name (ControlNet, T2I-Adapter, ControlNeXt,
Union, Control-LoRA, LLLite, …). Exit status 0 when every file was identified, 1 otherwise.

`python -m controlnet_core train …`: train a ControlNet from a base checkpoint (see train/cli.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .errors import ControlNetError
from .protocol import family_name
from .systems import identify
from .train import cli as train_cli


def _format(path: str, identity) -> str:
    lines = [identity.system,
             f"  file:       {path}",
             f"  variant:    {identity.variant}",
             f"  layout:     {identity.layout}",
             f"  base model: {family_name(identity.family) if identity.family else 'decided by the base model'}",
             f"  runs here:  {'yes' if identity.runs_here else 'no: ' + identity.advice}"]
    for key, value in identity.details.items():
        text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        lines.append(f"  {key + ':':<11} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlnet_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="name the system, variant, layout and base model of control files")
    inspect.add_argument("files", nargs="+")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    train_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args)

    status = 0
    for index, path in enumerate(args.files):
        try:
            identity = identify(path)
        except (ControlNetError, OSError) as exc:
            print(f"{path}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps({"file": path, **dataclasses.asdict(identity)}, default=str))
        else:
            print(("\n" if index else "") + _format(path, identity))
    return status


def _train(args) -> int:
    try:
        return train_cli.run(args)
    except (ControlNetError, FileNotFoundError, ImportError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train: interrupted; nothing was written to the output. Continue with --resume "
              "(from the last checkpoint in the work folder).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
