"""The ``llmscratch`` command: a thin dispatcher over subcommands. Each subcommand lives with
its package and contributes ``add_parser(subparsers)`` (setting ``func``)."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmscratch", description="llmscratch command line")
    sub = parser.add_subparsers(dest="command", required=True)
    from .data import tokenize_cmd
    from .train import command as train_cmd
    tokenize_cmd.add_parser(sub)
    train_cmd.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError, NotImplementedError, KeyError) as e:
        print(f"llmscratch {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
