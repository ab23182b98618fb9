"""Computing several models (or parts of one) side by side in processes on the CPU.

Most of a check's time goes into many small forward and backward passes (attacks, local
bounds), which one process cannot spread over several cores; separate processes can. Each
job rebuilds one model from its ``recipe`` (a picklable function returning the module, e.g.
``functools.partial(load_model, spec, weights, seed=...)``), refuses to go on if the
rebuilt weights hash differently, traces it once and appends the chunks it is given to its
own log (``samples.worker<i>.jsonl``) in the results log. The caller then reads everything
back as if resuming (:func:`numeric.check.run.run_check`), so the numbers are those of a
single process: each chunk's randomness depends on ``(seed, chunk)`` only. Processes come
from :func:`numeric.runner.in_processes` (Ctrl-C stops them all at once).

Jobs are one per model while there are at least as many models as workers, else each
model's chunks are split among the workers; larger jobs start first. Each process uses
``cores // workers`` intra-op threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from numeric.check.results import CheckSettings
from numeric.check.store import RunStore

__all__ = ["compute_in_workers", "Job"]


@dataclass
class Job:
    """One process's share: chunks of one model (``(chunk id, sample indices)``, with
    their samples ``x`` and labels ``y`` in that order), and how to rebuild the model."""

    recipe: object
    name: str
    spec: str
    training: str | None
    key: str
    material: dict
    chunks: list[tuple[int, list[int]]]
    x: object
    y: object
    settings: CheckSettings
    out: str
    writer: str
    threads: int


def run_job(job: Job) -> int:
    """Compute and log the chunks of ``job`` (in a worker process); return how many samples."""
    import torch

    from numeric.check.pipeline import ModelToCheck, measure_chunk, model_info, weights_hash
    from numeric.runner import chunk_generator

    torch.set_num_threads(job.threads)
    module = job.recipe().eval()
    if weights_hash(module) != job.material["weights"]:
        raise RuntimeError(f"worker: rebuilding model {job.name!r} gave other weights than "
                           f"the ones checked (a recipe that is not deterministic)")
    model = ModelToCheck(name=job.name, spec=job.spec, module=module, training=job.training)
    store = RunStore(job.out)
    info, traced = model_info(model, job.x[:1], job.material["num_classes"])
    store.write_info(job.key, info)
    log = store.log(job.key, job.material, job.writer)
    position = 0
    for chunk_id, indices in job.chunks:
        rows = slice(position, position + len(indices))
        position += len(indices)
        records = measure_chunk(module, traced, info, job.settings, job.x[rows], job.y[rows],
                                indices, chunk_generator(job.settings.seed, chunk_id))
        log.append(chunk_id, records)
    return position


def _jobs(keyed, x, y, settings: CheckSettings, store: RunStore, workers: int) -> list[Job]:
    from numeric.runner import RunContext, chunks
    from numeric.training import available_cores

    pending = []
    for model, key, material in keyed:
        if getattr(model, "recipe", None) is None:
            continue
        finished = store.chunks_done(key)
        todo = [(c, list(r)) for c, r in chunks(len(x), settings.chunk_size, RunContext())
                if c not in finished]
        if todo:
            pending.append((model, key, material, todo))
    parts = max(1, workers // max(1, len(pending)))
    threads = max(1, available_cores() // workers)
    jobs = []
    for model, key, material, todo in pending:
        for part in range(min(parts, len(todo))):
            share = todo[part::parts]
            rows = [i for _, indices in share for i in indices]
            jobs.append(Job(recipe=model.recipe, name=model.name, spec=model.spec,
                            training=model.training, key=key, material=material,
                            chunks=share, x=x[rows], y=y[rows], settings=settings,
                            out=str(store.out), writer="", threads=threads))
    jobs.sort(key=lambda job: -len(job.x))
    for number, job in enumerate(jobs):
        job.writer = f"worker{number}"
    return jobs


def compute_in_workers(keyed, x, y, settings: CheckSettings, store: RunStore, workers: int,
                       announce) -> int:
    """Compute the chunks not yet logged of every model with a recipe, in ``workers``
    processes; return the number of jobs run (0 when one process would do as well).

    Parameters
    ----------
    keyed : list of (ModelToCheck, key, key material)
    x, y : Tensor on the CPU
        The samples (N, C, H, W) and labels (N,).
    workers : int
        At most this many processes.
    announce : Announcer
        Gets a note and a bar over the samples computed.
    """
    from numeric.runner import in_processes

    jobs = _jobs(keyed, x, y, settings, store, workers)
    if len(jobs) < 2:
        return 0
    processes = min(workers, len(jobs))
    announce.note(f"computing {len(jobs)} jobs in {processes} processes")
    bar = announce.bar(sum(len(job.x) for job in jobs),
                       f"{len(jobs)} jobs in {processes} processes")
    try:
        for samples in in_processes(run_job, jobs, processes):
            if bar is not None:
                bar.update(samples)
    finally:
        if bar is not None:
            bar.close()
    return len(jobs)
