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

A command module imports nothing heavy at module level (no torch, no SymPy): the parser
imports every command module, and ``fimbound --help``, ``fimbound rank`` and
``fimbound derive GRAPH.json`` run where torch is not installed. Only subcommands whose
module exists are offered, so ``--help`` never lists a stub; a new verb is one module and
one entry in :data:`COMMANDS`.

Exit status (:data:`EXIT_OK`, :data:`EXIT_BUG`, :data:`EXIT_USAGE`,
:data:`EXIT_UNSOUND`, :data:`EXIT_INTERRUPTED`):

- 0: done;
- 2: a mistake in the user's input, printed as one line without traceback: the package
  errors (:class:`theory.TheoryError`, :class:`bounds.BoundsError`,
  :class:`numeric.NumericError`), a missing or unreadable file, an invalid option, a
  third-party package that cannot be imported (``derive --model`` without torch), or a
  ``ValueError`` raised by a command module's own argument checks (commands should raise
  :class:`numeric.InputError`);
- 3: a soundness violation: ``check`` found a bound below a measurement (it returns 3),
  or a certified entry point's self-check raised :class:`numeric.UnsoundBoundError`;
- 1: an internal error, one line saying it is a bug and that ``--debug`` shows the
  traceback;
- 130: interrupted (Ctrl-C); commands that log their progress resume when rerun.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Sequence

__all__ = ["main", "build_parser", "COMMANDS", "EXIT_OK", "EXIT_BUG", "EXIT_USAGE",
           "EXIT_UNSOUND", "EXIT_INTERRUPTED"]

#: Subcommands in the order ``--help`` lists them.
COMMANDS = ("derive", "rank", "estimate", "check", "report", "demo")

EXIT_OK = 0
#: An internal error (a bug).
EXIT_BUG = 1
#: A problem with the user's input.
EXIT_USAGE = 2
#: A soundness violation: a certified bound below a measured value.
EXIT_UNSOUND = 3
#: Interrupted by the user (128 + SIGINT).
EXIT_INTERRUPTED = 130

_EPILOG = """\
Run 'fimbound <command> --help' for the options of one command.

exit status: 0 done; 2 a mistake in the input (one line, nothing half-written);
3 a soundness violation (a certified bound below a measurement); 1 an internal error
(a bug: rerun with --debug for the traceback); 130 interrupted (commands that log their
progress resume when the same command is run again)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _available_commands() -> list[str]:
    return [name for name in COMMANDS
            if importlib.util.find_spec(f"numeric.commands.{name}") is not None]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand (imports no torch)."""
    parser = _Parser(
        prog="fimbound",
        description=(
            "Closed-form bounds and fast estimators for the spectral norm of the input "
            "Fisher information F(x) = J^T (diag p - p p^T) J of a classifier: derive "
            "bounds from architecture graphs, measure the true value on torch models, and "
            "check the one against the other and against adversarial attacks."),
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from numeric import __version__
    parser.add_argument("--version", action="version", version=f"fimbound {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True,
                                parser_class=_Parser)
    for name in _available_commands():
        module = importlib.import_module(f"numeric.commands.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.add_argument("--json", action="store_true",
                         help="print one JSON document on stdout instead of text")
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an internal error")
        cmd.set_defaults(_run=module.run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from bounds import BoundsError
    from numeric.errors import NumericError
    from theory import TheoryError
    return (TheoryError, BoundsError, NumericError, FileNotFoundError, PermissionError,
            IsADirectoryError, NotADirectoryError)


def _raised_by_a_command(err: BaseException) -> bool:
    """Whether ``err`` was raised in a ``numeric/commands`` module (its own checks)."""
    frames = traceback.extract_tb(err.__traceback__)
    folder = os.path.join("numeric", "commands") + os.sep
    return bool(frames) and folder in os.path.normpath(frames[-1].filename)


def _missing_package(err: BaseException) -> str | None:
    """The third-party package an ImportError is about (None for our own modules)."""
    name = getattr(err, "name", None)
    if not isinstance(err, ImportError) or not name:
        return None
    top = name.split(".")[0]
    return None if top in ("theory", "bounds", "numeric") else top


def _report(args, message: str, kind: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "type": kind}))
    print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fimbound`` console script; returns the exit status."""
    from numeric.validation import first_line

    parser = build_parser()
    args = parser.parse_args(argv)
    command = f"fimbound {args.command}"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        resumes = hasattr(args, "no_resume")
        print(f"{command}: interrupted" + ("; run the same command again to resume where "
                                           "it stopped" if resumes else "."), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - every error becomes one line and a status
        from numeric.errors import UnsoundBoundError
        if isinstance(err, UnsoundBoundError):
            _report(args, f"{command}: soundness violation: {first_line(err)}",
                    type(err).__name__)
            return EXIT_UNSOUND
        if isinstance(err, _user_errors()) or (isinstance(err, ValueError)
                                               and _raised_by_a_command(err)):
            _report(args, f"{command}: error: {first_line(err)}", type(err).__name__)
            return EXIT_USAGE
        missing = _missing_package(err)
        if missing is not None:
            _report(args, f"{command}: error: this needs the Python package {missing!r}, "
                          f"which cannot be imported here ({first_line(err)}); install it "
                          f"(pip install {missing})", type(err).__name__)
            return EXIT_USAGE
        if args.debug:
            raise
        _report(args, f"fimbound: internal error ({type(err).__name__}: {first_line(err)}); "
                      f"this is a bug — rerun with --debug for the traceback",
                type(err).__name__)
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
