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


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"llmscratch: warning: {message}\n"  # not the source line Python's format adds


def main(argv=None) -> int:
    import warnings
    import llmscratch_core
    args = build_parser().parse_args(argv)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (sample ... | head -1): nothing left to say
        sys.stderr.close()
        return 0
    # The errors a command raises about its input (settings, files, data, a checkpoint that does
    # not fit), as one line. Of IndexErrors only the core's: an id or target out of range (data
    # holding ids the model's vocabulary lacks); Python's own (a list index) would be a bug here.
    except (ValueError, OSError, RuntimeError, NotImplementedError, KeyError,
            llmscratch_core.IndexError) as e:
        # a KeyError's str() quotes its message
        text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
        print(f"llmscratch {args.command}: error: {text}", file=sys.stderr)
        return 2
    except MemoryError as e:  # a setting too large for this machine (a batch of 10^11 rows)
        print(f"llmscratch {args.command}: error: out of memory ({str(e) or 'a setting asks for more than this machine has'})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C where no checkpoint is due (a train saves one first)
        print(f"llmscratch {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
