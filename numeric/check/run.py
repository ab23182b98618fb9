"""Orchestration of a check: validation, the results log, resumption, report, exit status.

:func:`run_check` is the one entry point of ``fimbound check`` and ``fimbound demo``: it
validates every model before computing anything, logs each chunk's records as soon as they
exist (:mod:`numeric.check.store`), resumes from that log, and only then analyses and
writes the report. Nothing computed is ever lost to a later failure: the log survives it
and :func:`rebuild_report` (``fimbound report OUT``) turns it into ``report.md``,
``results.json`` and the figures without recomputing.

Exit status of a check (:func:`exit_status`): 0 sound, :data:`EXIT_UNSOUND` (3) when a
bound is below a measurement.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from numeric.check.results import CheckResult, CheckSettings, ModelResult, RunInfo
from numeric.check.store import RunStore, model_key_material
from numeric.errors import InputError

__all__ = ["run_check", "rebuild_report", "ensure_writable", "exit_status", "versions",
           "command_line", "EXIT_UNSOUND", "Announcer"]

#: Exit status of a check that found a bound below a measurement.
EXIT_UNSOUND = 3


@dataclass
class Announcer:
    """Where a run talks: progress bars and one-line notes on stderr (rank 0 only)."""

    notes: bool = True
    bars: bool = True

    def note(self, text: str) -> None:
        if self.notes:
            print(f"[check] {text}", file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str):
        if not self.bars:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, unit="sample", leave=False, file=sys.stderr)


def ensure_writable(out: str | os.PathLike, flag: str = "--out", caller: str = "check"
                    ) -> Path:
    """Refuse, before any model loads, an output folder that cannot be written.

    The folder is not created; a file is created and removed in it (or in its nearest
    existing parent) to prove it can be.

    Raises
    ------
    InputError
        The path exists and is not a folder, or cannot be written (the message names
        ``flag``).
    """
    out = Path(out)
    probe_dir = out
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"{caller}: expected a folder (or a new path) for {flag}, got "
                         f"{str(out)!r}: {str(probe_dir)!r} is not a folder.")
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as err:
        raise InputError(f"{caller}: expected a writable folder for {flag}, got {str(out)!r} "
                         f"({err.strerror or type(err).__name__}).") from err
    return out


def versions() -> dict[str, str]:
    """Versions of Python, the toolkit and the libraries that shape its numbers."""
    import platform
    from numeric import __version__
    out = {"python": platform.python_version(), "fimbound": __version__}
    for package in ("torch", "torchvision", "numpy", "scipy", "sympy", "networkx",
                    "adv-lib"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as a user would retype it (``argv`` default: ``sys.argv[1:]``)."""
    return shlex.join(["fimbound", *(sys.argv[1:] if argv is None else argv)])


def exit_status(result: CheckResult) -> int:
    """0 when sound, :data:`EXIT_UNSOUND` when any bound is below a measurement."""
    return 0 if result.analysis["soundness"]["sound"] else EXIT_UNSOUND


def _evaluate(model, store: RunStore, key: str, material: dict, x, y, settings, ctx,
              announce: Announcer) -> ModelResult | None:
    """One model: constants (traced once, or read back), then the chunks no process has
    logged yet, logged as they finish."""
    import torch

    from numeric.check.pipeline import measure_chunk, model_info
    from numeric.runner import chunk_generator, chunks, evaluate_chunks, gather_records

    log = store.log(key, material, f"rank{ctx.rank}")
    finished = store.chunks_done(key)
    todo = [(c, r) for c, r in chunks(len(x), settings.chunk_size, ctx) if c not in finished]
    info, traced, bar = store.read_info(key), None, None
    if todo or info is None:
        if ctx.is_main:
            bar = announce.bar(sum(len(r) for _, r in todo), model.name)
        if bar is not None:
            bar.set_postfix_str("tracing")
        info, traced = model_info(model, x[:1], material["num_classes"])
        if ctx.is_main:
            store.write_info(key, info)
    info.name = model.name

    def compute(chunk_id: int, indices: range) -> list[dict]:
        gen = chunk_generator(settings.seed, chunk_id, device=ctx.device)
        sel = torch.as_tensor(list(indices), device=ctx.device)
        stage = bar.set_postfix_str if bar is not None else None
        records = measure_chunk(model.module, traced, info, settings, x[sel], y[sel],
                                list(indices), gen, on_stage=stage)
        if bar is not None:
            bar.update(len(indices))
        return records

    try:
        records = evaluate_chunks(compute, len(x), chunk_size=settings.chunk_size, ctx=ctx,
                                  log=log, finished=finished)
    finally:
        if bar is not None:
            bar.close()
    records = gather_records(records, ctx)
    return ModelResult(info=info, records=records) if ctx.is_main else None


def _keys(models, data, settings, store: RunStore, device: str, data_key: dict | None
          ) -> list[tuple]:
    from numeric.check.pipeline import weights_hash
    data_key = {**(data_key or {"data": data.name}), "samples": len(data.x)}
    keyed = []
    for model in models:
        material = model_key_material(weights_hash(model.module), model.spec, data_key,
                                      settings, device)
        material["num_classes"] = data.num_classes
        keyed.append((model, store.key(material), material))
    return keyed


def run_check(models: Sequence, data, settings: CheckSettings, *, out: str | os.PathLike,
              ctx=None, resume: bool = True, data_key: dict | None = None,
              command: str = "", announce: Announcer | None = None,
              seconds: dict[str, float] | None = None, workers: int = 1
              ) -> CheckResult | None:
    """Check every model on ``data``; log, analyse and write the report in ``out``.

    Parameters
    ----------
    models : sequence of ModelToCheck
        Distinct names; modules in eval mode on ``ctx.device``.
    data : numeric.data.Dataset
        ``x`` Tensor of shape (N, C, H, W), ``y`` (N,), ``num_classes``, ``name``.
    settings : CheckSettings
    out : path
        Output folder: ``report.md``, ``results.json``, figures and the results log
        (``.progress``).
    ctx : numeric.runner.RunContext, optional
        Distributed context; only rank 0 writes the report.
    resume : bool
        Read back chunks already logged under the same key (else recompute them and start
        a fresh log).
    data_key : dict, optional
        What identifies the data (specification, size, channels); default its name.
    command : str
        The command line, recorded in the report.
    announce : Announcer, optional
        Progress bars and notes (default: both on stderr).
    seconds : dict, optional
        Times of stages before this call (loading), recorded in the report.
    workers : int
        Processes computing models (or parts of one) side by side on the CPU
        (:mod:`numeric.check.workers`; only models with a ``recipe``); 1: all here.

    Returns
    -------
    CheckResult on rank 0 (analysed), ``None`` on other ranks.

    Raises
    ------
    InputError
        A model that cannot be checked on the data (before anything is computed), an
        unwritable ``out``, or a results log of other weights under the same key.
    """
    from numeric.check.pipeline import validate_model
    from numeric.check.workers import compute_in_workers
    from numeric.runner import RunContext

    ctx = ctx or RunContext(device=data.x.device)
    announce = announce or Announcer()
    out = ensure_writable(out)
    seconds = dict(seconds or {})
    start = time.perf_counter()
    x, y = data.x.to(ctx.device), data.y.to(ctx.device)
    for model in models:
        validate_model(model.name, model.module, x, data.num_classes)
    store = RunStore(out)
    keyed = _keys(models, data, settings, store, str(getattr(ctx.device, "type", ctx.device)),
                  data_key)
    total = -(-len(x) // settings.chunk_size)
    run = RunInfo(command=command, versions=versions(), device=str(ctx.device),
                  run_key=store.key({"models": [k for _, k, _ in keyed]}),
                  chunks_total=total * len(keyed), chunks_done=total * len(keyed))
    def record_run() -> None:
        store.write_manifest(settings=settings, data_name=data.name, num_samples=len(x),
                             models=[(m.name, m.spec, k) for m, k, _ in keyed], run=run)

    if ctx.is_main:
        if not resume:
            for _, key, _ in keyed:
                for path in (store.root / key).glob("samples.*.jsonl"):
                    path.unlink()
        record_run()
        announce.note(f"results are logged in {store.root} as they are computed; if the "
                      f"run stops (Ctrl-C), rerun the same command to resume")
        for model, key, _ in keyed:
            done = len(store.chunks_done(key))
            run.resumed += done
            if done:
                announce.note(f"{model.name}: resumed {done}/{total} chunks from "
                              f"{store.root / key}")
    if ctx.distributed:
        import torch.distributed as dist
        dist.barrier()  # every rank sees the cleared logs
    seconds["validate"] = time.perf_counter() - start
    start = time.perf_counter()
    if workers > 1 and not ctx.distributed and ctx.is_main:
        compute_in_workers(keyed, x.cpu(), y.cpu(), settings, store, workers, announce)
    results = [_evaluate(model, store, key, material, x, y, settings, ctx, announce)
               for model, key, material in keyed]
    seconds["models"] = time.perf_counter() - start
    if not ctx.is_main:
        return None
    result = _finish(CheckResult(settings=settings, data_name=data.name, models=results,
                                 run=run), out, seconds)
    record_run()  # with the timings, for a later `fimbound report`
    return result


def _finish(result: CheckResult, out: Path, seconds: dict) -> CheckResult:
    from numeric.check.analysis import analyse
    from numeric.check.report import write_report

    start = time.perf_counter()
    result.analysis = analyse(result)
    seconds["analysis"] = time.perf_counter() - start
    result.run.seconds = seconds
    write_report(result, out)
    return result


def rebuild_report(out: str | os.PathLike, announce: Announcer | None = None, *,
                   bootstrap: int | None = None) -> CheckResult:
    """``fimbound report OUT``: rebuild ``report.md``, ``results.json`` and the figures
    from the results log in ``OUT`` without recomputing anything (no torch needed).

    Works on an interrupted run too: the report then says which part was computed.
    ``bootstrap`` replaces the run's number of bootstrap resamples.

    Raises
    ------
    InputError
        ``OUT`` holds no results log, or nothing was computed yet.
    """
    announce = announce or Announcer(bars=False)
    out = ensure_writable(out, "DIR", "report")
    store = RunStore(out)
    result, missing = store.load()
    if bootstrap is not None:
        result.settings = dataclasses.replace(result.settings, bootstrap=bootstrap)
    for line in missing:
        announce.note(f"left out {line}")
    if not result.run.complete:
        announce.note(f"partial results: {result.run.chunks_done} of "
                      f"{result.run.chunks_total} chunks were computed")
    seconds = dict(result.run.seconds)
    return _finish(result, out, seconds)
