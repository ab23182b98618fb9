"""The ``fimbound`` command line.

Each subcommand lives in its own module ``numeric.commands.<name>`` that defines

``HELP``
    a one-line summary shown by ``fimbound --help``;
``DESCRIPTION``
    the longer text shown by ``fimbound <name> --help``;
``add_arguments(parser)``
    adds the subcommand's options (``--json`` is added here for every subcommand);
``run(args) -> int``
    does the work and returns the exit status.

Only subcommands whose module exists are offered, so ``--help`` never lists a stub.
Errors a user can fix (bad paths, bad models, bad data) are raised as
:class:`theory.TheoryError`, :class:`bounds.BoundsError`, :class:`numeric.NumericError`
or :class:`ValueError`/:class:`FileNotFoundError`; they are printed as one line and the
command exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "COMMANDS", "EXIT_USAGE"]

#: Subcommands in the order ``--help`` lists them.
COMMANDS = ("derive", "rank", "estimate", "check", "demo")

#: Exit status for a problem with the user's input.
EXIT_USAGE = 2


def _available_commands() -> list[str]:
    return [name for name in COMMANDS
            if importlib.util.find_spec(f"numeric.commands.{name}") is not None]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="fimbound",
        description=(
            "Closed-form bounds and fast estimators for the spectral norm of the input "
            "Fisher information F(x) = J^T (diag p - p p^T) J of a classifier: derive "
            "bounds from architecture graphs, measure the true value on torch models, and "
            "check the one against the other and against adversarial attacks."),
        epilog="Run 'fimbound <command> --help' for the options of one command.",
    )
    from numeric import __version__
    parser.add_argument("--version", action="version", version=f"fimbound {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in _available_commands():
        module = importlib.import_module(f"numeric.commands.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.add_argument("--json", action="store_true",
                         help="print one JSON document on stdout instead of text")
        cmd.set_defaults(_run=module.run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from bounds import BoundsError
    from numeric.errors import NumericError
    from theory import TheoryError
    return (TheoryError, BoundsError, NumericError, ValueError, FileNotFoundError,
            PermissionError, IsADirectoryError, NotADirectoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fimbound`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except _user_errors() as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if getattr(args, "json", False):
            print(json.dumps({"error": message, "type": type(err).__name__}))
        print(f"fimbound {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fimbound {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
