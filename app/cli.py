"""`var`: one command, one subcommand per stage.

Subcommands are listed here by module path and imported only when run, so `var --help` answers
without loading torch. A subcommand module provides `add_arguments(parser)` and `run(args) -> int`.
Errors caused by the input (`scaffold.errors.UserError`: a missing file, a config typo, a wrong
checkpoint, a full disk) are printed as one line naming the problem, with exit status 2; so is an
`OSError` that reached here (a file the system refused). Anything else is a bug: one line saying so,
exit status 1. `--debug` (anywhere on the line) or ``NEXTSCALE_DEBUG=1`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "DEBUG_ENV", "main"]

DEBUG_ENV = "NEXTSCALE_DEBUG"


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # provides add_arguments(parser) and run(args) -> int
    help: str


# In the order a user meets them: tokenizer, transformer, sampling, evaluation, UI, the demo.
COMMANDS: tuple[Command, ...] = (
    Command("train-tokenizer", "tokenizer.train", "train the multi-scale VQ tokenizer (Lightning; CPU, GPU, DDP)"),
    Command("tokenize", "var.token_cache", "encode a dataset once into a token cache for training the transformer"),
    Command("train", "var.train", "train the transformer from a token cache (Lightning; CPU, GPU, DDP/FSDP, nodes)"),
    Command("sample", "var.batch_sample", "batch-generate N images per class as PNG folders and an ADM-format .npz"),
    Command("edit", "app.edit_command", "regenerate a masked region of an image, with or without a class"),
    Command("eval", "var.evaluate", "score samples: FID, IS, precision/recall (local Inception weights) or --digits"),
    Command("app", "app.serve", "serve the web UI: sample by class, watch scales refine, edit images (Gradio)"),
    Command("demo", "app.demo", "the whole pipeline on a CPU: digits in minutes (or --data emoji), then the web UI"),
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nextscale")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="var",
        description="Next-scale image generation: train the tokenizer, then the transformer, then sample, "
        "batch-generate or serve the web UI. Every config-driven command takes --config FILE (repeatable: merged in "
        "order) and key=value overrides.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help=f"print the traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for cmd in COMMANDS:
        sub.add_parser(cmd.name, help=cmd.help, add_help=False)
    return parser


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _os_error_line(err: OSError) -> str:
    """An OSError as one line: what the system said, and the file when it names one."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename:
        from scaffold.io import user_error_for

        return str(user_error_for(err, err.filename))
    reason = err.strerror or str(err) or type(err).__name__
    return f"{reason}: {err.filename}" if err.filename else reason


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]  # a global flag, accepted before or after the command
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0 if not argv else 2
    cmd = next(c for c in COMMANDS if c.name == args.command)
    module = importlib.import_module(cmd.module)
    sub = argparse.ArgumentParser(prog=f"var {cmd.name}", description=cmd.help)
    module.add_arguments(sub)
    sub_args = sub.parse_args(rest)

    from scaffold.errors import UserError

    def fail(line: str, status: int) -> int:
        if debug:
            traceback.print_exc()
        print(f"var {cmd.name}: {line}", file=sys.stderr)
        return status

    try:
        return int(module.run(sub_args) or 0)
    except UserError as err:
        return fail(f"error: {err}", 2)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except OSError as err:  # the system refused a file (a disk full, a permission) outside scaffold.io
        return fail(f"error: {_os_error_line(err)}", 2)
    except Exception as err:  # a bug: say so in one line; the traceback is one flag away
        first = str(err).splitlines()[0] if str(err) else ""
        what = f"{type(err).__name__}: {first}" if first else type(err).__name__
        where = "" if debug else f"; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
        return fail(f"internal error: {what}{where}", 1)
