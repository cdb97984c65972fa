"""Entry for outpainting with an adapted LoRA: ``python infer/outpaint.py --config CONFIG [options] [key=value ...]``.

A thin shell over ``motia outpaint``: the same config, overrides, outputs, errors
(one line, exit code 2) and ``--debug``. Without ``--lora`` it runs the unadapted
baseline. Outputs go to ``<output.dir>/<output.name or clip stem>/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from motia.cli import main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Outpaint a clip, with the LoRA adapted to it or without.")
    p.add_argument("--config", required=True, help="job config YAML, e.g. configs/tiny.yaml")
    p.add_argument("--lora", help="adapter written by adaptation, a diffusers or AnimateDiff motion LoRA, or a folder "
                                  "holding one (omit for the unadapted baseline)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace finished outputs of another config in the run folder (refused otherwise)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. video.path=clip.mp4 outpaint.left=0.5")
    return p.parse_args(argv)


def to_cli(args: argparse.Namespace) -> list[str]:
    """The equivalent ``motia`` command line."""
    lora = ["--lora", args.lora] if args.lora else []
    return ["--debug"] * args.debug + ["outpaint", args.config, *args.overrides, *lora] + ["--overwrite"] * args.overwrite


if __name__ == "__main__":
    sys.exit(main(to_cli(parse_args())))
