"""`var`: one command, one subcommand per stage.

Subcommands are listed here by module path and imported only when run, so `var --help` answers
without loading torch. A subcommand module provides `add_arguments(parser)` and `run(args) -> int`.
Errors caused by the input (`scaffold.errors.UserError`: a missing file, a config typo, a wrong
checkpoint) are printed as one line naming the problem, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "main"]


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # provides add_arguments(parser) and run(args) -> int
    help: str


# In the order a user meets them: tokenizer, transformer, sampling, evaluation, UI, the demo.
COMMANDS: tuple[Command, ...] = (
    Command("train-tokenizer", "tokenizer.train", "train the multi-scale VQ tokenizer (Lightning; CPU, GPU, DDP)"),
    Command("tokenize", "var.tokenize", "encode a dataset once into a token cache for training the transformer"),
    Command("train", "var.train", "train the transformer from a token cache (Lightning; CPU, GPU, DDP/FSDP, nodes)"),
    Command("sample", "var.batch", "batch-generate N images per class as PNG folders and an ADM-format .npz"),
    Command("eval", "var.evaluate", "score samples: FID, IS, precision/recall (local Inception weights) or --digits"),
    Command("app", "app.serve", "serve the web UI: sample by class, watch scales refine, edit images (Gradio)"),
    Command("demo", "app.demo", "the whole pipeline on the bundled digits in minutes on a CPU, then the web UI"),
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
        "batch-generate or serve the web UI. Every config-driven command takes --config FILE and key=value overrides.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for cmd in COMMANDS:
        sub.add_parser(cmd.name, help=cmd.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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

    try:
        return int(module.run(sub_args) or 0)
    except UserError as err:
        print(f"var {cmd.name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"var {cmd.name}: interrupted", file=sys.stderr)
        return 130
