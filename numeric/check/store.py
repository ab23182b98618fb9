"""The results log of a check: what survives any failure, and what ``fimbound report``
reads (no torch).

Layout under the output folder ``OUT``::

    OUT/.progress/run.json                    the latest run: settings, data, models, provenance
    OUT/.progress/<key>/info.json             one model's constants (ModelInfo)
    OUT/.progress/<key>/samples.<w>.jsonl    its per-sample records, one chunk per line, one file
                                          per process that wrote (rank0, worker1, ...)

``<key>`` hashes everything a model's numbers depend on: the hash of its weights, its
specification, the data (specification, size, channels, samples), the computing settings
(every :class:`CheckSettings` field but ``bootstrap``), the device type and the toolkit
version. A rerun with the same key resumes (chunks already logged are read back, not
recomputed); anything else gets a new key, so results of two different models or settings
are never mixed, and each log's first line repeats its key material, so a log moved
under the wrong key is refused (:class:`numeric.runner.ResultLog`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from numeric.check.results import (CheckResult, CheckSettings, ModelInfo, ModelResult,
                                   RunInfo, from_json_ready, write_json_atomic)
from numeric.errors import InputError
from numeric.runner import ResultLog, run_key

__all__ = ["RunStore", "model_key_material", "LOG_FOLDER"]

#: Name of the results-log folder inside the output folder.
LOG_FOLDER = ".progress"


def model_key_material(weights: str, spec: str, data: dict, settings: CheckSettings,
                       device: str) -> dict:
    """What a model's per-sample numbers depend on (hashed into its log key)."""
    from numeric import __version__
    return {"weights": weights, "spec": spec, "data": data, "settings": settings.computing(),
            "device": device, "fimbound": __version__}


class RunStore:
    """The results log of one output folder.

    Parameters
    ----------
    out : path
        The ``--out`` folder.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.root = self.out / LOG_FOLDER

    # ------------------------------------------------------------------ writing
    def write_manifest(self, *, settings: CheckSettings, data_name: str, num_samples: int,
                       models: list[tuple[str, str, str]], run: RunInfo) -> None:
        """Record the run: ``models`` as ``(name, spec, key)`` in order."""
        write_json_atomic({"settings": asdict(settings), "data": data_name,
                           "num_samples": num_samples, "run": asdict(run),
                           "models": [{"name": n, "spec": s, "key": k} for n, s, k in models]},
                          self.root / "run.json")

    def log(self, key: str, material: dict, writer: str) -> ResultLog:
        """The per-sample log one process (``writer``: ``"rank0"``, ``"worker1"``, ...)
        writes for one model; it refuses a file holding another key's records."""
        return ResultLog(self.root / key / f"samples.{writer}.jsonl",
                         header={"key": key, **material})

    def write_info(self, key: str, info: ModelInfo) -> None:
        write_json_atomic(asdict(info), self.root / key / "info.json")

    # ------------------------------------------------------------------ reading
    def read_info(self, key: str) -> ModelInfo | None:
        path = self.root / key / "info.json"
        if not path.is_file():
            return None
        try:
            return ModelInfo.from_dict(from_json_ready(json.loads(path.read_text())))
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(f"report: expected a model description in {str(path)!r}, got "
                             f"unreadable JSON ({err}).") from err

    def chunks_done(self, key: str) -> dict[int, list[dict]]:
        """The finished chunks of one model in every process's log: ``{chunk: records}``.

        Raises
        ------
        InputError
            A log under this key holds another key's records.
        """
        done: dict[int, list[dict]] = {}
        for path in sorted((self.root / key).glob("samples.*.jsonl")):
            log = ResultLog(path)
            header, chunks = log.recorded_header(), log.done()
            if header is None and not chunks:
                continue  # killed before its first chunk was written
            material = {k: v for k, v in (header or {}).items() if k != "key"}
            if header is None or header.get("key") != key or run_key(**material) != key:
                raise InputError(
                    f"check: expected {str(path)!r} to hold results of the model and "
                    f"settings keyed {key}, got {header.get('key') if header else 'no key'}"
                    f"; refusing to mix them (delete the file or rerun with --no-resume).")
            done.update(chunks)
        return done

    def manifest(self) -> dict:
        path = self.root / "run.json"
        if not path.is_file():
            raise InputError(f"report: expected a folder written by fimbound check (with "
                             f"{LOG_FOLDER}/run.json), got {str(self.out)!r}.")
        try:
            return from_json_ready(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise InputError(f"report: expected JSON in {str(path)!r}, got a damaged file "
                             f"({err}).") from err

    def load(self) -> tuple[CheckResult, list[str]]:
        """The latest run's results as far as they were computed.

        Returns
        -------
        (CheckResult, list of str)
            The result (not analysed; ``run.chunks_done`` / ``chunks_total`` say how
            complete it is) and one line per model left out (no constants logged yet).

        Raises
        ------
        InputError
            No results log in the folder, or nothing computed yet.
        """
        manifest = self.manifest()
        settings = CheckSettings.from_dict(manifest["settings"])
        per_model = math.ceil(int(manifest["num_samples"]) / settings.chunk_size)
        run = RunInfo.from_dict(manifest.get("run", {}))
        models, missing, done_total = [], [], 0
        for entry in manifest["models"]:
            info = self.read_info(entry["key"])
            if info is None:
                missing.append(f"{entry['name']}: its certified constants were never "
                               f"computed (the run stopped before them)")
                continue
            info.name = entry["name"]
            chunks = self.chunks_done(entry["key"])
            done_total += len(chunks)
            records = sorted((r for part in chunks.values() for r in part),
                             key=lambda r: r["index"])
            models.append(ModelResult(info=info, records=from_json_ready(records)))
        if not models:
            raise InputError(f"report: expected computed results in {str(self.root)!r}, got "
                             f"none yet ({'; '.join(missing) or 'no models'}).")
        run.chunks_total = per_model * len(manifest["models"])
        run.chunks_done = done_total
        return CheckResult(settings=settings, data_name=manifest["data"], models=models,
                           run=run), missing

    @staticmethod
    def key(material: dict) -> str:
        return run_key(**material)
