"""Deterministic chunked evaluation: sharding across ranks, resumable logs, gathering.

Every long evaluation in fimbound (``check``, ``estimate``) processes the samples in fixed
*chunks* of consecutive indices. A chunk is the unit of work, of randomness and of
resumption:

- chunk ``c`` always holds the same samples, whatever the number of processes, and its
  random generator is seeded from ``(seed, c)`` alone — so a run under ``torchrun`` with any
  number of ranks gives the same per-sample numbers as a single process (up to floating-point
  reassociation inside batched kernels);
- rank ``r`` of ``W`` takes the chunks ``c`` with ``c % W == r``;
- after each chunk its records are appended to a JSON-lines log and flushed, so a killed run
  loses at most the chunk in flight and a rerun with the same arguments skips what is done;
- rank 0 gathers every rank's records (``torch.distributed.gather_object``) and alone writes
  the report.

Launch with ``torchrun --nproc_per_node 2 -m numeric.cli check ...`` (or pass
``--distributed``); the backend is NCCL when every rank has a GPU and gloo otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["RunContext", "run_context", "chunks", "ResultLog", "run_key", "gather_records",
           "evaluate_chunks", "chunk_generator"]


@dataclass(frozen=True)
class RunContext:
    """Where this process stands in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes reports and prints summaries (rank 0)."""
        return self.rank == 0


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def run_context(device: str | None = None, distributed: bool | None = None) -> RunContext:
    """Detect a ``torchrun`` launch (or honour ``distributed=True``) and pick the device.

    Parameters
    ----------
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... . Under a distributed CUDA run each rank
        uses ``cuda:LOCAL_RANK``. Default: CUDA when available, else CPU.
    distributed : bool, optional
        ``None`` detects ``torchrun`` from its environment variables; ``True`` requires them.
    """
    launched = _launched_by_torchrun()
    if distributed is None:
        distributed = launched and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not launched:
        raise ValueError("run_context: expected a torchrun launch (RANK and WORLD_SIZE set) "
                         "for --distributed, got neither; run under torchrun.")
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"run_context: expected an available device, got {wanted!r} "
                         f"but torch sees no CUDA device.")
    if not distributed:
        return RunContext(device=torch.device(wanted))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return RunContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=dev,
                      distributed=True)


def chunks(num_samples: int, chunk_size: int, ctx: RunContext) -> list[tuple[int, range]]:
    """This rank's chunks as ``(chunk_id, range of sample indices)``.

    >>> [(c, list(r)) for c, r in chunks(5, 2, RunContext(rank=1, world_size=2))]
    [(1, [2, 3])]
    """
    if chunk_size < 1:
        raise ValueError(f"chunks: expected chunk_size >= 1, got {chunk_size}.")
    ids = range((num_samples + chunk_size - 1) // chunk_size)
    return [(c, range(c * chunk_size, min((c + 1) * chunk_size, num_samples)))
            for c in ids if c % ctx.world_size == ctx.rank]


def chunk_generator(seed: int, chunk_id: int, device: torch.device | str = "cpu"
                    ) -> torch.Generator:
    """The random generator of one chunk, seeded from ``(seed, chunk_id)`` only."""
    digest = hashlib.sha256(f"{seed}:{chunk_id}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little"))


def run_key(**settings) -> str:
    """A short stable hash of the settings that determine a run's results.

    >>> run_key(model="m", samples=3) == run_key(samples=3, model="m")
    True
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultLog:
    """Append-only JSON-lines log of per-chunk records for one run and one rank.

    Each line is ``{"chunk": c, "records": [...]}``; a line cut short by a kill is ignored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def done(self) -> dict[int, list[dict]]:
        """Chunks already completed: ``{chunk_id: records}``."""
        if not self.path.exists():
            return {}
        finished: dict[int, list[dict]] = {}
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the chunk in flight when the run was killed
            finished[int(entry["chunk"])] = entry["records"]
        return finished

    def append(self, chunk_id: int, records: list[dict]) -> None:
        """Append one finished chunk and force it to disk."""
        with self.path.open("a") as handle:
            handle.write(json.dumps({"chunk": chunk_id, "records": records}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def gather_records(records: list[dict], ctx: RunContext) -> list[dict] | None:
    """All ranks' records on rank 0, sorted by ``"index"``; ``None`` on other ranks."""
    if not ctx.distributed:
        return sorted(records, key=lambda r: r["index"])
    gathered: list[list[dict]] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(records, gathered, dst=0)
    if not ctx.is_main:
        return None
    return sorted((r for part in gathered for r in part), key=lambda r: r["index"])


def evaluate_chunks(compute: Callable[[int, range], list[dict]], num_samples: int, *,
                    chunk_size: int, ctx: RunContext, log: ResultLog | None = None,
                    progress: Callable[[Iterable], Iterator] | None = None) -> list[dict]:
    """Run ``compute(chunk_id, indices)`` on this rank's chunks not yet in ``log``.

    Returns this rank's records (resumed and new). ``progress`` wraps the iterable of
    chunks (for a tqdm bar).
    """
    finished = log.done() if log is not None else {}
    mine = chunks(num_samples, chunk_size, ctx)
    records: list[dict] = []
    todo = []
    for chunk_id, indices in mine:
        if chunk_id in finished:
            records.extend(finished[chunk_id])
        else:
            todo.append((chunk_id, indices))
    iterator = progress(todo) if progress is not None else iter(todo)
    for chunk_id, indices in iterator:
        new = compute(chunk_id, indices)
        if log is not None:
            log.append(chunk_id, new)
        records.extend(new)
    return records
