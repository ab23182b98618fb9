"""Run a benchmark with one torch thread, restoring the caller's setting afterwards.

The machines benchmarks run on are shared; one thread keeps side-by-side ratios stable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["single_threaded"]


def single_threaded(function: Callable[[bool], str], quick: bool) -> str:
    """``function(quick)`` under ``torch.set_num_threads(1)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(quick)
    finally:
        torch.set_num_threads(threads)
