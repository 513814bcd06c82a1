"""`python -m controlnet_core inspect FILE…`: what a ControlNet file is, without loading its weights.
`python -m controlnet_core train …`: train a ControlNet from a base checkpoint (see train/cli.py)."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import ControlNetError
from .loader import describe
from .train import cli as train_cli


def _format(info: dict) -> str:
    down = info["residual_shapes"]["down"]
    lines = [
        f"file:          {info['source']}",
        f"family:        {info['family']}",
        f"layout:        {info['layout']}",
        f"hint channels: {info['hint_channels']}",
        f"residuals:     {info['residual_count']['down']} down + {info['residual_count']['mid']} mid "
        f"(shapes C×h×w for a {info['residual_shapes']['latent'][0]}² latent)",
        "  down:        " + ", ".join("×".join(map(str, s)) for s in down),
        "  mid:         " + "×".join(map(str, info["residual_shapes"]["mid"])),
        f"parameters:    {info['parameters']:,}",
        f"dtype:         {info['dtype']}",
    ]
    if info.get("file_bytes"):
        lines.append(f"file size:     {info['file_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlnet_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print family, layout, hint channels, residuals, parameters, dtype")
    inspect.add_argument("files", nargs="+")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    train_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args)

    status = 0
    for path in args.files:
        try:
            info = describe(path)
        except (ControlNetError, FileNotFoundError) as exc:
            print(f"{path}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(json.dumps(info, default=str) if args.json else _format(info))
        if len(args.files) > 1 and not args.json:
            print()
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
