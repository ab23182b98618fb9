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
from typing import TYPE_CHECKING, Any

from numeric.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: reading a log needs no torch
    import torch

__all__ = ["RunContext", "run_context", "chunks", "ResultLog", "run_key", "gather_records",
           "evaluate_chunks", "chunk_generator", "in_processes"]


@dataclass(frozen=True)
class RunContext:
    """Where this process stands in a (possibly distributed) run.

    ``device`` is a ``torch.device`` (or a device string, for callers that never touch
    torch).
    """

    rank: int = 0
    world_size: int = 1
    device: Any = "cpu"
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
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"`` (checked by
        :func:`numeric.device.resolve_device`; a refusal names ``--device``). Under a
        distributed CUDA run each rank uses ``cuda:LOCAL_RANK``. Default: CUDA when
        available, else CPU.
    distributed : bool, optional
        ``None`` detects ``torchrun`` from its environment variables; ``True`` requires them.

    Raises
    ------
    InputError
        An unusable device, or ``distributed=True`` outside ``torchrun``.
    """
    launched = _launched_by_torchrun()
    if distributed is None:
        distributed = launched and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not launched:
        raise InputError("run_context: expected a torchrun launch (RANK and WORLD_SIZE set) "
                         "for --distributed, got neither; run under torchrun.")
    from numeric.device import resolve_device
    dev = resolve_device(device, caller="--device")
    if not distributed:
        return RunContext(device=dev)
    import torch
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        backend = "gloo"
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
        raise InputError(f"chunks: expected chunk_size >= 1, got {chunk_size}.")
    ids = range((num_samples + chunk_size - 1) // chunk_size)
    return [(c, range(c * chunk_size, min((c + 1) * chunk_size, num_samples)))
            for c in ids if c % ctx.world_size == ctx.rank]


def chunk_generator(seed: int, chunk_id: int, device: "torch.device | str" = "cpu"
                    ) -> "torch.Generator":
    """The random generator of one chunk, seeded from ``(seed, chunk_id)`` only."""
    import torch
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
    """Append-only JSON-lines log of per-chunk records for one run and one process.

    Each line is ``{"chunk": c, "records": [...]}``; a line cut short by a kill is ignored
    (and the next append starts on a new line). With a ``header`` (a JSON-able dict naming
    what the records were computed from, e.g. the hash of the model's weights and the
    settings), the file starts with ``{"header": header}`` and a log whose header differs
    is refused instead of being mixed with new results.

    Parameters
    ----------
    path : path
        The ``.jsonl`` file (its folder is created on the first write).
    header : dict, optional
        What the records depend on.

    Raises
    ------
    InputError
        (from :meth:`done`) the file holds another run's records.
    """

    def __init__(self, path: str | os.PathLike, header: dict | None = None) -> None:
        self.path = Path(path)
        self.header = None if header is None else json.loads(json.dumps(header, default=str))

    def _entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the chunk in flight when the run was killed
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def recorded_header(self) -> dict | None:
        """The header the file holds (``None``: no file, or none written yet)."""
        return next((e["header"] for e in self._entries() if "header" in e), None)

    def done(self) -> dict[int, list[dict]]:
        """Chunks already completed: ``{chunk_id: records}``."""
        entries = self._entries()
        recorded = next((e["header"] for e in entries if "header" in e), None)
        if self.header is not None and recorded is not None and recorded != self.header:
            raise InputError(
                f"ResultLog: expected {str(self.path)!r} to hold results of {self.header}, "
                f"got results of {recorded}; refusing to mix them (delete the file or rerun "
                f"with --no-resume).")
        return {int(e["chunk"]): e["records"] for e in entries
                if "chunk" in e and "records" in e}

    def append(self, chunk_id: int, records: list[dict]) -> None:
        """Append one finished chunk and force it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        if self.header is not None and self.recorded_header() is None:
            lines.append(json.dumps({"header": self.header}))
        lines.append(json.dumps({"chunk": chunk_id, "records": records}))
        text = "\n".join(lines) + "\n"
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a line cut short by a kill
                    text = "\n" + text
        with self.path.open("a") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def gather_records(records: list[dict], ctx: RunContext) -> list[dict] | None:
    """All ranks' records on rank 0, sorted by ``"index"``; ``None`` on other ranks."""
    if not ctx.distributed:
        return sorted(records, key=lambda r: r["index"])
    import torch.distributed as dist
    gathered: list[list[dict]] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(records, gathered, dst=0)
    if not ctx.is_main:
        return None
    return sorted((r for part in gathered for r in part), key=lambda r: r["index"])


def evaluate_chunks(compute: Callable[[int, range], list[dict]], num_samples: int, *,
                    chunk_size: int, ctx: RunContext, log: ResultLog | None = None,
                    progress: Callable[[Iterable], Iterator] | None = None,
                    finished: dict[int, list[dict]] | None = None) -> list[dict]:
    """Run ``compute(chunk_id, indices)`` on this rank's chunks not yet done.

    Returns this rank's records (resumed and new). ``progress`` wraps the iterable of
    chunks (for a tqdm bar). ``finished`` gives the chunks already done (``{chunk:
    records}``, e.g. from the logs of every rank of an earlier run with another number of
    processes); default: those in ``log``.
    """
    if finished is None:
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


def _worker_setup() -> None:
    import signal
    import threading

    from tqdm import tqdm
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # tqdm (which torch.export uses inside) would create a process-shared lock, which a
    # terminated worker could not release; a thread lock is all one process needs
    tqdm.set_lock(threading.RLock())


def in_processes(function: Callable, jobs: Iterable, processes: int) -> Iterator:
    """``function(job)`` for every job in ``processes`` spawned processes; yields the
    results as they finish (in any order).

    ``spawn`` because a fork after torch has started its threads can deadlock. The workers
    ignore Ctrl-C and hold no process-shared locks; on Ctrl-C or any error here they are
    terminated at once (whatever they have logged stays), so an interrupted run prints one
    line, not a traceback (or a leaked-semaphore warning) per process.
    ``function`` and the jobs must be picklable (module-level functions, plain data).
    """
    import multiprocessing
    pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_worker_setup)
    try:
        yield from pool.imap_unordered(function, jobs)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        del pool
        import gc
        gc.collect()  # release the pool's semaphores now, not at interpreter exit
