"""The data of a check: settings, per-model constants, per-sample records (no torch).

Everything :mod:`numeric.check.analysis`, :mod:`~numeric.check.report` and
:mod:`~numeric.check.figures` read is defined here, and this module imports neither torch
nor the pipeline, so a results log can be turned into a report where torch is not
installed (``fimbound report OUT``) and ``fimbound --help`` stays cheap.

A check is a :class:`CheckResult`: its :class:`CheckSettings`, the data set's name, one
:class:`ModelResult` per model (a :class:`ModelInfo` of per-model constants and a list of
per-sample records, plain dicts whose keys are listed in :data:`SAMPLE_FIELDS`), the run's
provenance (:class:`RunInfo`) and, once analysed, the statistics.

JSON: :meth:`CheckResult.to_dict` / :meth:`CheckResult.from_dict` round-trip exactly;
:func:`json_ready` turns non-finite floats into the strings ``"inf"``, ``"-inf"``,
``"nan"`` (standard JSON has no such numbers) and :func:`from_json_ready` turns them back.

Examples
--------
>>> info = ModelInfo(name="m", spec="fimbound:vgg", num_classes=10, global_bound=math.inf)
>>> result = CheckResult(CheckSettings(samples=2), "digits", [ModelResult(info, [])])
>>> CheckResult.from_dict(json.loads(json.dumps(json_ready(result.to_dict())))) == result
True
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from numeric._atomic import write_atomically

__all__ = ["CheckSettings", "ModelInfo", "ModelResult", "RunInfo", "CheckResult",
           "SAMPLE_FIELDS", "json_ready", "from_json_ready", "write_json_atomic"]

#: Keys of a per-sample record and what each holds. A new per-sample measurement is one
#: entry here and one stage in :data:`numeric.check.pipeline.STAGES`.
SAMPLE_FIELDS: dict[str, str] = {
    "index": "position of the sample in the loaded data",
    "label": "true class",
    "pred": "predicted class (argmax of the logits)",
    "correct": "pred == label",
    "margin": "top logit minus the second (float64)",
    "lambda_max": "largest eigenvalue of F(x), exact (K <= 64) or Lanczos (below the truth)",
    "lambda_method": "'exact' or 'lanczos'",
    "lambda_converged": "whether Lanczos met its tolerance (always true for 'exact')",
    "trace": "tr F(x), exact (K <= 64) or Hutch++",
    "spectrum": "the largest eigenvalues of F(x), largest first",
    "local_bound": "certified bound on lambda_max(F(x)) at this sample",
    "blackbox": "black-box estimate of lambda_max from probabilities only",
    "blackbox_queries": "model evaluations the black-box estimate used",
    "attack_radius": "smallest L2 perturbation found that changes the prediction (inf: none)",
    "attack_found_by": "the attack (ensemble member) that found it ('none': nothing found)",
    "certified_radius": "the largest certified radius the toolkit proves (the best of "
                        "the region, linear and global certificates): no perturbation below "
                        "it (inside the attack's box) changes the prediction",
    "certified_radius_global": "margin / (sqrt(2) L), L the certified Lipschitz bound of "
                               "the centred logits over every input",
    "certified_radius_region": "integrated region-bound certificate "
                               "(TracedModel.certified_radius; None: not computed)",
    "certified_radius_linear": "the radius linear bound propagation (CROWN) of the "
                               "margins over the ball and the attack's box certifies, "
                               "bisected up from the region and global radii (so never "
                               "below them; None: not computed, or a network outside its "
                               "domain)",
    "region_eps": "radius of the ball of region_bound: a quarter of the attack radius (0 "
                  "when no adversarial was found)",
    "region_bound": "certified bound on lambda_max(F(x')) over every x' within region_eps "
                    "of the sample (None: not computed)",
    "pgd_<norm>_<eps>": "whether PGD at that radius left the label unchanged",
    "seconds": "per-sample share of each stage's time in this sample's chunk",
}


@dataclass(frozen=True)
class CheckSettings:
    """Everything that determines the per-sample numbers of a check (and ``bootstrap``,
    which only changes the statistics, so it is left out of the resume key).

    ``attacks`` names the members of the minimum-norm attack ensemble
    (:func:`numeric.attacks.minimum_norm_attack`); empty: its default ensemble.
    ``region_steps``: grid points per factor 256 of radius of the region certificate
    (:meth:`numeric.graph.TracedModel.certified_radius`); 0 skips the region stage.
    ``linear_steps``: bisection passes of the linear-bound certificate
    (:mod:`numeric.graph.crown`); 0 skips it.
    """

    samples: int = 100
    chunk_size: int = 16
    seed: int = 0
    queries: int = 200
    attack_steps: int = 200
    attack_restarts: int = 2
    attacks: tuple[str, ...] = ()
    pgd_l2: tuple[float, ...] = (0.5, 1.0)
    pgd_linf: tuple[float, ...] = (0.05, 0.1)
    pgd_steps: int = 50
    pgd_restarts: int = 3
    bootstrap: int = 2000
    spectrum_size: int = 10
    region_steps: int = 16
    linear_steps: int = 6

    def computing(self) -> dict:
        """The settings that change per-sample numbers (everything but ``bootstrap``)."""
        return {k: v for k, v in asdict(self).items() if k != "bootstrap"}

    @classmethod
    def from_dict(cls, document: dict) -> "CheckSettings":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        for key in ("pgd_l2", "pgd_linf"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if "attacks" in values:
            values["attacks"] = tuple(str(v) for v in values["attacks"])
        return cls(**values)


@dataclass
class ModelInfo:
    """Per-model constants, computed once per model (certified unless ``certified`` is
    false).

    Attributes
    ----------
    name, spec : str
        Display name and the ``--model`` specification.
    num_classes : int
        K.
    global_bound : float
        Certified bound on ``λ_max(F(x))`` for every input (``inf``: none exists, e.g.
        attention without a bounded domain).
    lipschitz : float
        Certified Lipschitz bound of the centred logits; the certified radius is
        ``margin / (sqrt(2) · lipschitz)``.
    plain_bound : float
        ``½ (∏ ‖layer‖)²`` without BatchNorm folding, pooling merging or centring: the
        textbook product, for comparison.
    certified : bool
        False if any constant is an estimate (then no bound above is a certificate).
    family, family_depth, preset : optional
        Architecture family and the ``depth`` of its closed form, or a preset name: what
        :mod:`numeric.check.theory` needs for the theoretical ranking.
    layer_constant : float, optional
        Geometric mean of the certified conv/linear norms.
    parameters : int
    weights_hash : str
        SHA-256 prefix of the state dict; the resume log is keyed on it.
    training : str, optional
        ``"pgd"`` for adversarially trained models, ``"normal"``, or unknown.
    seconds : dict
        Time of each per-model stage (``"trace"``, ``"plain_bound"``).
    """

    name: str
    spec: str
    num_classes: int
    global_bound: float = math.inf
    lipschitz: float = math.inf
    plain_bound: float = math.inf
    certified: bool = True
    family: str | None = None
    family_depth: Any = None
    preset: str | None = None
    layer_constant: float | None = None
    parameters: int = 0
    weights_hash: str = ""
    training: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def adversarial(self) -> bool:
        """Whether the model was adversarially (PGD) trained."""
        return self.training == "pgd"

    @classmethod
    def from_dict(cls, document: dict) -> "ModelInfo":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        if isinstance(values.get("family_depth"), list):
            values["family_depth"] = tuple(values["family_depth"])
        return cls(**values)


@dataclass
class ModelResult:
    """One model's constants and its per-sample records (sorted by ``index``)."""

    info: ModelInfo
    records: list[dict]


@dataclass
class RunInfo:
    """Provenance of a check: what ran, where, and how long each stage took.

    ``chunks_done`` / ``chunks_total`` count the chunks of every model (equal unless the
    report was rebuilt from an interrupted run); ``resumed`` counts those read back from
    the log instead of computed; ``seconds`` times the run-level stages.
    """

    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    device: str = ""
    run_key: str = ""
    chunks_done: int = 0
    chunks_total: int = 0
    resumed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.chunks_done >= self.chunks_total

    @classmethod
    def from_dict(cls, document: dict) -> "RunInfo":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in known})


@dataclass
class CheckResult:
    """A whole check: settings, data, models, provenance and (once analysed) statistics."""

    settings: CheckSettings
    data_name: str
    models: list[ModelResult]
    run: RunInfo = field(default_factory=RunInfo)
    analysis: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain Python (floats may be non-finite; pass through :func:`json_ready`)."""
        return {"settings": asdict(self.settings), "data": self.data_name,
                "run": asdict(self.run),
                "models": [{"info": asdict(m.info), "samples": m.records}
                           for m in self.models],
                "analysis": self.analysis}

    @classmethod
    def from_dict(cls, document: dict) -> "CheckResult":
        """Inverse of :meth:`to_dict` (also accepts :func:`json_ready` output)."""
        document = from_json_ready(document)
        return cls(settings=CheckSettings.from_dict(document["settings"]),
                   data_name=document["data"],
                   models=[ModelResult(ModelInfo.from_dict(m["info"]), list(m["samples"]))
                           for m in document["models"]],
                   run=RunInfo.from_dict(document.get("run", {})),
                   analysis=document.get("analysis", {}))


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def json_ready(obj):
    """``obj`` with non-finite floats as ``"inf"``, ``"-inf"``, ``"nan"`` (standard JSON),
    numpy scalars as Python numbers and tuples as lists.

    >>> json_ready({"a": [1.0, float("inf")], "b": (float("nan"),)})
    {'a': [1.0, 'inf'], 'b': ['nan']}
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else
                                               "-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "item"):  # numpy (or torch) scalar
        return json_ready(obj.item())
    return str(obj)


def from_json_ready(obj):
    """Inverse of :func:`json_ready` for floats: ``"inf"``, ``"-inf"``, ``"nan"`` strings
    become floats again (no field of a check holds those strings as text)."""
    if isinstance(obj, str):
        return _NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: from_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_ready(v) for v in obj]
    return obj


def write_json_atomic(document: dict, path: str | os.PathLike) -> None:
    """Write ``json_ready(document)`` to ``path`` via a temporary file and ``os.replace``,
    so that a reader never sees half a file."""
    write_atomically(path, lambda handle: json.dump(json_ready(document), handle, indent=1),
                     readable=True)  # a report is for reading
