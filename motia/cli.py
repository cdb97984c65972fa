"""The `motia` command: info, preview, adapt, outpaint, run, demo, batch, eval, adapters, app.

Errors from bad input are one line (``error: ...``) with exit code 2; ``--debug``
shows the traceback (the parser and that contract are ``motia.command``'s). Heavy
libraries are imported inside the verbs, so ``motia --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .command import build_parser, parse_args, run


def _dispatch(args: argparse.Namespace) -> int:
    from . import job

    if args.verb == "info":
        from .config import load_config
        from .errors import ConfigError

        if args.num_processes is not None and args.num_processes < 1:
            raise ConfigError(f"--num_processes must be 1 or more, got {args.num_processes}")
        print(job.describe(load_config(args.config, args.overrides), num_processes=args.num_processes))
        return 0
    if args.verb == "preview":
        from .config import load_config

        path = job.preview(load_config(args.config, args.overrides), args.out)
        print(f"preview written to {path}")
        return 0
    if args.verb == "adapt":
        from .adapt import adapt_from_config
        from .config import load_config

        adapt_from_config(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
        return 0
    if args.verb == "outpaint":
        from .config import load_config
        from .outpaint import outpaint_from_config

        cfg = load_config(args.config, args.overrides)
        _quiet_other_processes()
        outpaint_from_config(cfg, lora=args.lora, overwrite=args.overwrite, sharded=True)
        return 0
    if args.verb == "run":
        from .config import load_config

        cfg = load_config(args.config, args.overrides)
        _quiet_other_processes()
        job.adapt_and_outpaint(cfg, overwrite=args.overwrite, sharded=True)
        return 0
    if args.verb == "demo":
        job.demo(args.overrides, overwrite=args.overwrite)
        return 0
    if args.verb == "batch":
        from .batch import run_batch

        return run_batch(args.manifest, args.overrides, overwrite=args.overwrite)
    if args.verb == "eval":
        from .evaluate import eval_from_file

        eval_from_file(args.config)
        return 0
    if args.verb == "app":
        from .app import launch

        config, overrides = args.config, list(args.overrides)
        if config is not None and "=" in config and not Path(config).exists():  # only overrides were given
            config, overrides = None, [config, *overrides]
        launch(config, overrides, host=args.host, port=args.port, auth=args.auth, auth_file=args.auth_file,
               no_auth=args.no_auth)
        return 0
    if args.verb == "adapters":
        from . import batch

        return batch.adapters_command(args)
    build_parser().print_help()
    return 0


def _quiet_other_processes() -> None:
    """Under a multi-process launch (``motia.shard``) only the main process logs what it does; the
    others log warnings and errors."""
    import logging
    import os

    from .shard import launched_processes

    if launched_processes() > 1 and int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("motia").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """`motia ARGS`: the verb's exit code (0 done, 1 internal failure, 2 bad input, 130 interrupted)."""
    return run(parse_args(argv), _dispatch)


def entry(argv: list[str] | None = None) -> None:
    """Console-script wrapper."""
    sys.exit(main(argv))


if __name__ == "__main__":
    entry()
