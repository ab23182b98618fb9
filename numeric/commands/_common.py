"""Options and plumbing shared by ``check``, ``estimate`` and ``demo``."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

__all__ = ["add_run_options", "progress_factory", "file_fingerprint", "print_json"]


def add_run_options(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """``--device``, ``--out``, ``--seed``, ``--distributed``, ``--no-resume``, ``--quiet``."""
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu); "
                             "under torchrun each rank uses its own GPU")
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help=f"output folder (default: {default_out})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random choice (default: 0); same seed, same numbers")
    parser.add_argument("--distributed", action="store_true",
                        help="require a torchrun launch and shard the samples across ranks "
                             "(detected automatically when launched by torchrun)")
    parser.add_argument("--no-resume", action="store_true",
                        help="recompute everything instead of skipping samples already in "
                             "DIR/.progress from an earlier run with the same arguments")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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
    from numeric.report import _clean
    print(json.dumps(_clean(document), indent=1))
