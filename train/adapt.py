"""Accelerate entry for adaptation: ``accelerate launch train/adapt.py --config CONFIG [options] [key=value ...]``.

A thin shell over ``motia adapt``: the same config, overrides, errors (one line,
exit code 2) and ``--debug``. The device comes from the config (``models.device``;
under ``accelerate launch --cpu`` use a config with ``models.device: cpu``). Mixed
precision is the launcher's ``--mixed_precision fp16|bf16`` when ``adapt.mixed_precision``
is ``auto``; an explicit config value wins, with a one-line warning when they differ.
``accelerate launch --config_file configs/accelerate.yaml`` gives the launcher its
settings (one process) without its warning about defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from motia.cli import main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the clip's LoRA (input-specific adaptation).")
    p.add_argument("--config", required=True, help="job config YAML, e.g. configs/tiny.yaml")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's latest checkpoint (a larger adapt.steps extends a finished run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished adapter of another config in the output folder (refused otherwise)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. adapt.steps=200 video.path=clip.mp4")
    return p.parse_args(argv)


def to_cli(args: argparse.Namespace) -> list[str]:
    """The equivalent ``motia`` command line."""
    flags = ["--resume"] * args.resume + ["--overwrite"] * args.overwrite
    return ["--debug"] * args.debug + ["adapt", args.config, *args.overrides, *flags]


if __name__ == "__main__":
    sys.exit(main(to_cli(parse_args())))
