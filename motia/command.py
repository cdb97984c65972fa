"""The command line's shared half: the argument parser, log levels and the one-line error contract.

``motia`` (``motia.cli``, which holds the verbs) and ``python -m motia.batch`` (for
``accelerate launch -m``) both parse and run through here, so the batch runner never
imports the CLI. Errors from bad input are one line (``error: ...``) with exit code 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
import warnings
from typing import Callable

from . import __version__
from .errors import MotiaError


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="job config YAML (e.g. configs/tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sample.steps=10 video.path=clip.mp4")
    _add_debug(p)


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace finished outputs of another config in the output folder (refused otherwise)")  # fmt: skip


def _add_debug(p: argparse.ArgumentParser) -> None:
    # Also accepted after the verb; SUPPRESS keeps the top-level value when it is not given here.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line; ``key=value`` overrides may come before or after the verb's options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motia",
        description="Video outpainting: adapt a LoRA to a clip, then extend the clip beyond its borders.",
    )
    parser.add_argument("--version", action="version", version=f"motia {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("info", help="print the resolved config, canvas geometry and work estimate")
    _add_config(p)
    p.add_argument("--num_processes", type=int, default=None, metavar="N",
                   help="show how each step's model calls split over N processes (accelerate launch --num_processes N; "
                        "default: the launcher's, else 1)")  # fmt: skip

    p = sub.add_parser("preview", help="write a PNG of the source on the canvas with the insertion map")
    _add_config(p)
    p.add_argument("--out", help="PNG path (default: <run dir>/preview.png)")

    p = sub.add_parser("adapt", help="train the clip's LoRA (input-specific adaptation)")
    _add_config(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint of this run (a larger adapt.steps extends a finished run)")
    _add_overwrite(p)

    p = sub.add_parser("outpaint", help="outpaint the clip (with an adapted LoRA, or none)")
    _add_config(p)
    p.add_argument("--lora", help="adapter from `motia adapt`, a diffusers or AnimateDiff motion LoRA, or a folder "
                                  "holding one (omit for the unadapted baseline)")  # fmt: skip
    _add_overwrite(p)

    p = sub.add_parser("run", help="adapt, then outpaint, in one go")
    _add_config(p)
    _add_overwrite(p)

    p = sub.add_parser("demo", help="adapt and outpaint the bundled sample clip with the tiny models (CPU)")
    p.add_argument("overrides", nargs="*", help="dotted overrides on configs/tiny.yaml")
    _add_overwrite(p)
    _add_debug(p)

    p = sub.add_parser("batch", help="adapt and outpaint every clip of a batch manifest")
    p.add_argument("manifest", help="batch YAML (see configs/batch_example.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every clip")
    _add_overwrite(p)
    _add_debug(p)

    p = sub.add_parser("eval", help="score outpainting on a DAVIS/YouTube-VOS style dataset")
    p.add_argument("config", help="eval YAML (see configs/eval_example.yaml)")
    _add_debug(p)

    p = sub.add_parser("app", help="the local web app: preview, adapt, outpaint and compare in a browser")
    _add_config(p, required=False)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only; "
                                                        "any other needs a password or --no-auth)")  # fmt: skip
    p.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    p.add_argument("--auth", metavar="USER:PASSWORD",
                   help="log in with this user and password (it stays in the shell history: prefer --auth-file or "
                        "$MOTIA_APP_AUTH)")  # fmt: skip
    p.add_argument("--auth-file", metavar="FILE", help="read USER:PASSWORD from the first line of FILE")
    p.add_argument("--no-auth", action="store_true", help="serve beyond this machine without a password (a warning)")

    p = sub.add_parser("adapters", help="list, remove or export adapters")
    asub = p.add_subparsers(dest="adapters_verb", metavar="ACTION")
    a = asub.add_parser("list", help="list cached adapters")
    a.add_argument("--cache", help="cache folder (default: $MOTIA_ADAPTERS or ~/.cache/motia/adapters)")
    a = asub.add_parser("rm", help="remove cached adapters by key prefix (or --all)")
    a.add_argument("keys", nargs="*")
    a.add_argument("--all", action="store_true")
    a.add_argument("--cache")
    a = asub.add_parser("export", help="write an adapter in the original AnimateDiff motion-LoRA layout (ComfyUI)")
    a.add_argument("adapter", help="a LoRA file or a folder holding one, or a cached adapter's key prefix")
    a.add_argument("--out", help="file to write (default: <adapter>.animatediff.safetensors beside a file, <key>"
                                 ".animatediff.safetensors here for a cache key; .ckpt: a torch checkpoint)")
    a.add_argument("--format", choices=["animatediff"], default="animatediff", help="layout to write (animatediff)")
    a.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    a.add_argument("--cache", help="cache folder for key prefixes")
    return parser


_NOISY = ("diffusers", "transformers", "accelerate", "httpx", "huggingface_hub")
# diffusers, transformers and huggingface_hub set their own logger levels from these
# variables when first used (after this runs: the verbs import them lazily).
_VERBOSITY_ENV = ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY")


def quiet_libraries(debug: bool = False) -> None:
    """Third-party logs at error level (their notices are not the user's business), all of them with ``--debug``.

    A verbosity variable the user set is kept.
    """
    for var in _VERBOSITY_ENV:
        os.environ.setdefault(var, "info" if debug else "error")
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    if not debug:  # their deprecation notices about each other's arguments, too
        warnings.filterwarnings("ignore", module=r"(diffusers|transformers|accelerate|huggingface_hub|peft)(\.|$)")


def run(args: argparse.Namespace, dispatch: Callable[[argparse.Namespace], int]) -> int:
    """Run a parsed command line's verb (``dispatch``) with the logging setup and error contract; the exit code."""
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries(args.debug)
    try:
        return dispatch(args)
    except MotiaError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        from .utils import NO_SPACE, write_error

        if e.errno not in (*NO_SPACE, errno.EROFS):  # a full or read-only disk the writers did not name (a log line)
            return _internal(args, e)
        if args.debug:
            traceback.print_exc()
        print(f"error: {write_error(e, e.filename or 'an output')}", file=sys.stderr)
        return 2
    except Exception as e:  # an internal failure, not bad input: say so and how to see more
        return _internal(args, e)


def _internal(args: argparse.Namespace, e: Exception) -> int:
    if args.debug:
        traceback.print_exc()
    else:
        print(f"error: internal {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
    return 1
