"""``fimbound report``: rebuild a check's report from its results log, recomputing nothing."""

from __future__ import annotations

import argparse

from numeric.commands._common import print_outcome

HELP = "rebuild report.md, results.json and the figures of a check from its results log"
DESCRIPTION = """\
Reads DIR/.progress (written by `fimbound check` and `fimbound demo` as they compute) and
writes DIR/report.md, DIR/results.json and the figures again, without recomputing
anything and without torch. Use it after a run that stopped before its report (the
report then says which part was computed), or to redo the statistics with another
--bootstrap.

examples:
  fimbound report fimbound-report
  fimbound report rep --bootstrap 5000
exit status: 0 sound, 3 soundness violation, 2 no results log in DIR."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="DIR", help="the --out folder of a check or demo")
    parser.add_argument("--bootstrap", type=int, default=None,
                        help="bootstrap resamples of every interval (default: the run's)")
    parser.add_argument("--quiet", action="store_true", help="no notes on stderr")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from numeric.check.run import Announcer, rebuild_report
    from numeric.errors import InputError

    if args.bootstrap is not None and args.bootstrap < 1:
        raise InputError(f"report: expected --bootstrap >= 1, got {args.bootstrap}.")
    if not Path(args.out).is_dir():
        raise InputError(f"report: expected the folder of a check, got {args.out!r}, which "
                         f"is not a folder.")
    quiet = args.quiet or args.json
    result = rebuild_report(args.out, announce=Announcer(notes=not quiet, bars=False),
                            bootstrap=args.bootstrap)
    return print_outcome(result, Path(args.out) / "report.md", as_json=args.json)
