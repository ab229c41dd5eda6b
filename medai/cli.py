"""The ``medai`` command line: ``medai segment|classify|models|fetch|demo|train|evaluate ...`` (see ``medai --help``).

Each sub-command lives in ``medai/commands/<name>.py`` with ``register(subparsers)``; its
handler returns an exit code. Errors are printed as one clear line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ["segment", "classify", "batch", "models", "fetch", "demo", "train", "evaluate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medai", description="MONAI segmentation and classification on image files.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stage")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"medai.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; ``argv=None`` (the ``medai`` command line, a process of its own) may import MONAI lean."""
    from .commands import fast_start

    if argv is None:
        fast_start.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("medai: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line; --verbose shows the traceback
        if fast_start.needs_full_imports(exc):  # a MONAI feature needed a package hidden for a fast start
            return fast_start.rerun_full()
        if args.verbose:
            logging.exception("failed")
        print(f"medai {args.command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if argv is None:
            fast_start.before_exit()


if __name__ == "__main__":
    sys.exit(main())
