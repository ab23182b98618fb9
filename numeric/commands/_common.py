"""Options and plumbing shared by ``check``, ``demo``, ``report`` and ``estimate``.

Nothing here imports torch: building the parser must stay cheap (``fimbound --help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

__all__ = ["add_run_options", "progress_factory", "file_fingerprint", "print_json",
           "print_outcome"]


def add_run_options(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """``--device``, ``--out``, ``--seed``, ``--distributed``, ``--no-resume``, ``--quiet``."""
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or auto (default: auto, cuda when "
                             "available, else cpu); under torchrun each rank uses its own GPU")
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help=f"output folder (default: {default_out})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random choice, random-init weights included "
                             "(default: 0); same seed, same numbers")
    parser.add_argument("--distributed", action="store_true",
                        help="require a torchrun launch and shard the samples across ranks "
                             "(detected automatically when launched by torchrun)")
    parser.add_argument("--no-resume", action="store_true",
                        help="recompute everything instead of reading back samples already "
                             "in DIR/.progress from an earlier run of the same models with "
                             "the same settings")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or notes on stderr")


def progress_factory(quiet: bool, main: bool):
    """A tqdm wrapper for chunk loops, or ``None`` when bars are off."""
    if quiet or not main:
        return None
    from tqdm.auto import tqdm

    def wrap(iterable, desc: str = ""):
        return tqdm(iterable, desc=desc, unit="chunk", leave=False, file=sys.stderr)
    return wrap


def file_fingerprint(path: str | None) -> str | None:
    """Content hash of a weights file, so that a resumed run never mixes two weight sets."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return str(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def print_json(document: dict) -> None:
    """Print ``document`` as standard JSON (non-finite floats as strings)."""
    from numeric.check.results import json_ready
    print(json.dumps(json_ready(document), indent=1))


def print_outcome(result, report: Path, *, as_json: bool) -> int:
    """Print a check's summary (or JSON) and its violations; return the exit status."""
    from numeric.check.report import summary_table
    from numeric.check.run import exit_status
    if as_json:
        print_json(result.to_dict() | {"report": str(report)})
    else:
        print(summary_table(result))
        print(f"\nreport: {report}")
    sound = result.analysis["soundness"]
    for v in sound["violations"][:20]:
        print(f"fimbound: SOUNDNESS VIOLATION: model {v['model']} sample {v['index']} "
              f"({v['kind']}): measured {v['measured']:.6g} > bound {v['bound']:.6g}",
              file=sys.stderr)
    if len(sound["violations"]) > 20:
        print(f"fimbound: ... {len(sound['violations']) - 20} more in {report}",
              file=sys.stderr)
    return exit_status(result)
