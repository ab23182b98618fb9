"""``fimbound check``: bounds vs measured Fisher spectra vs attacks on real models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from numeric.commands._common import (add_run_options, file_fingerprint, print_json,
                                      progress_factory)

HELP = "check bounds against measured Fisher spectra and attacks, with a report"
DESCRIPTION = """\
For every model and every test sample: the certified global and local bounds on
lambda_max(F(x)), the exact lambda_max (exact or Lanczos by K), tr F, the black-box
estimate, the smallest L2 perturbation a minimum-norm attack finds, PGD robustness at
stated radii, and the certified radius margin / (sqrt(2) L). Then soundness (any bound
below a measurement exits with status 1 and names the sample), tightness, rank
correlations with bootstrap intervals, and the robustness rankings with Kendall tau.

Writes DIR/report.md, DIR/results.json and PNG figures (atomically); prints a summary.

Models:  torchvision:NAME (random init unless --weights), fimbound:NAME, FILE.py:FACTORY
Data:    digits | lfw | folder:PATH | cifar10:PATH | npz:PATH (MedMNIST arrays)

examples:
  fimbound check --model fimbound:vgg --weights vgg.pt --data digits --samples 50
  fimbound check --model a.py:build --model b.py:build --data npz:chest.npz --out rep
  torchrun --nproc_per_node 2 -m numeric.cli check --model ... --data ...
exit status: 0 sound, 1 soundness violation, 2 bad input (nothing written)."""


def add_check_options(parser: argparse.ArgumentParser, defaults=None) -> None:
    """Sample and attack settings shared with ``demo`` (``defaults``: a CheckSettings)."""
    from numeric.check import CheckSettings
    d = defaults or CheckSettings()
    parser.add_argument("--samples", type=int, default=d.samples,
                        help=f"test samples per model (default: {d.samples})")
    parser.add_argument("--queries", type=int, default=d.queries,
                        help=f"black-box query budget per input (default: {d.queries})")
    parser.add_argument("--attack-steps", type=int, default=d.attack_steps,
                        help=f"minimum-norm attack steps (default: {d.attack_steps})")
    parser.add_argument("--attack-restarts", type=int, default=d.attack_restarts,
                        help=f"minimum-norm attack restarts (default: {d.attack_restarts})")
    parser.add_argument("--pgd-l2", type=float, nargs="*", default=list(d.pgd_l2),
                        metavar="EPS", help=f"PGD-L2 radii (default: {list(d.pgd_l2)})")
    parser.add_argument("--pgd-linf", type=float, nargs="*", default=list(d.pgd_linf),
                        metavar="EPS", help=f"PGD-Linf radii (default: {list(d.pgd_linf)})")
    parser.add_argument("--pgd-steps", type=int, default=d.pgd_steps,
                        help=f"PGD steps (default: {d.pgd_steps})")
    parser.add_argument("--pgd-restarts", type=int, default=d.pgd_restarts,
                        help=f"PGD random restarts (default: {d.pgd_restarts})")
    parser.add_argument("--bootstrap", type=int, default=d.bootstrap,
                        help=f"bootstrap resamples of every interval (default: {d.bootstrap})")
    parser.add_argument("--chunk-size", type=int, default=d.chunk_size,
                        help=f"samples per unit of work and of resumption "
                             f"(default: {d.chunk_size})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="SPEC",
                        help="model to check; repeat to compare several side by side")
    parser.add_argument("--weights", action="append", default=[], metavar="PATH",
                        help="state dict for the model at the same position (give one per "
                             "--model, or none)")
    parser.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="display name for the model at the same position")
    parser.add_argument("--data", default="digits", metavar="SPEC",
                        help="digits | lfw | folder:PATH | cifar10:PATH | npz:PATH "
                             "(default: digits)")
    add_check_options(parser)
    add_run_options(parser, default_out="fimbound-report")


def settings_from(args: argparse.Namespace):
    from numeric.check import CheckSettings
    for flag in ("samples", "queries", "attack_steps", "pgd_steps", "chunk_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"check: expected --{flag.replace('_', '-')} >= 1, "
                             f"got {getattr(args, flag)}.")
    if args.attack_restarts < 1 or args.pgd_restarts < 1:
        raise ValueError("check: expected at least one restart for each attack.")
    if any(e <= 0 for e in args.pgd_l2 + args.pgd_linf):
        raise ValueError(f"check: expected positive PGD radii, got "
                         f"{args.pgd_l2 + args.pgd_linf}.")
    return CheckSettings(samples=args.samples, chunk_size=args.chunk_size, seed=args.seed,
                         queries=args.queries, attack_steps=args.attack_steps,
                         attack_restarts=args.attack_restarts, pgd_l2=tuple(args.pgd_l2),
                         pgd_linf=tuple(args.pgd_linf), pgd_steps=args.pgd_steps,
                         pgd_restarts=args.pgd_restarts,
                         bootstrap=getattr(args, "bootstrap", CheckSettings.bootstrap))


def run_check(models, data, settings, args, run_settings: dict, ctx) -> int:
    """Shared tail of ``check`` and ``demo``: evaluate, report, print, exit status."""
    from numeric.check import check_models
    from numeric.report import summary_table, write_report
    from numeric.runner import ResultLog, run_key

    out = Path(args.out)
    key = run_key(**run_settings)

    def log_for(name: str):
        if args.no_resume:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return ResultLog(out / ".progress" / key / f"{safe}.rank{ctx.rank}.jsonl")

    result = check_models(models, data.x, data.y, data_name=data.name,
                          num_classes=data.num_classes, settings=settings, ctx=ctx,
                          log_for=log_for,
                          progress=progress_factory(args.quiet or args.json, ctx.is_main))
    if result is None:  # not rank 0
        return 0
    report = write_report(result, out)
    sound = result.analysis["soundness"]
    if args.json:
        print_json(result.to_dict() | {"report": str(report)})
    else:
        print(summary_table(result))
        print(f"\nreport: {report}")
    if not sound["sound"]:
        for v in sound["violations"][:20]:
            print(f"fimbound: SOUNDNESS VIOLATION: model {v['model']} sample {v['index']} "
                  f"({v['kind']}): measured {v['measured']:.6g} > bound {v['bound']:.6g}",
                  file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from numeric.data import load_data
    from numeric.loading import load_model
    from numeric.runner import run_context

    settings = settings_from(args)
    if args.weights and len(args.weights) != len(args.model):
        raise ValueError(f"check: expected one --weights per --model ({len(args.model)}), "
                         f"got {len(args.weights)}.")
    if args.name and len(args.name) != len(args.model):
        raise ValueError(f"check: expected one --name per --model ({len(args.model)}), "
                         f"got {len(args.name)}.")
    ctx = run_context(args.device, True if args.distributed else None)
    data = load_data(args.data, samples=settings.samples, split="test", seed=settings.seed)
    weights = args.weights or [None] * len(args.model)
    names = args.name or [_display_name(spec, i, args.model) for i, spec in
                          enumerate(args.model)]
    if len(set(names)) != len(names):
        raise ValueError(f"check: expected distinct model names, got {names}; use --name.")
    models = []
    for name, spec, path in zip(names, args.model, weights):
        model = load_model(spec, path, num_classes=data.num_classes, device=ctx.device)
        models.append((name, spec, model))
    run_settings = {"models": list(zip(args.model, map(file_fingerprint, weights), names)),
                    "data": args.data, "settings": settings.__dict__}
    return run_check(models, data, settings, args, run_settings, ctx)


def _display_name(spec: str, i: int, specs: list[str]) -> str:
    """``resnet18`` for ``torchvision:resnet18``, ``net`` for ``path/net.py:build``."""
    def base(text: str) -> str:
        kind, _, rest = text.partition(":")
        return Path(kind).stem if kind.endswith(".py") else rest
    name = base(spec)
    return name if sum(base(s) == name for s in specs) == 1 else f"{name}-{i + 1}"
