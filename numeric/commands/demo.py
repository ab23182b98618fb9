"""``fimbound demo``: the whole story on embedded data, nothing downloaded."""

from __future__ import annotations

import argparse
import sys
import time

from numeric.commands._common import add_run_options, print_outcome
from numeric.commands.check import add_check_options, announcer, settings_from

HELP = "train small VGG/ResNet/DenseNet/ViT models on digits and check them (make demo)"
DESCRIPTION = """\
Trains small VGG-, ResNet-, DenseNet- and ViT-style (transformer) models on scikit-learn's
digits (8x8 images, 10 classes), each normally and adversarially (PGD), with fixed seeds on
the CPU; caches the weights in $FIMBOUND_CACHE (default ~/.cache/fimbound) keyed by their
configuration; then runs the same check as `fimbound check` on all eight and writes the
report.

The first run trains (about a minute on 2 idle cores, one model per core); later runs
load the cache. The same seed gives the same numbers on every run; a rerun with the same
--out reads back what is already in its results log."""

def _demo_settings():
    from numeric.check.results import CheckSettings
    # sized for the demo's minute or less on 2 idle cores: 20 samples (two per class) in one
    # chunk per model (one job per worker process), the toolkit's attack and its boundary
    # refinement (within 2% of the full ensemble's median radius on these models, a third
    # of its time), 40 steps, one PGD radius per norm, the region certificate on a grid of
    # factor 2 (8 points per factor 256: half the passes of check's default)
    # and no linear-bound radius (a minute or more per CNN: `fimbound check` runs it)
    return CheckSettings(samples=20, chunk_size=20, attack_steps=40, attack_restarts=1,
                         attacks=("toolkit", "refine"), pgd_l2=(0.5,), pgd_linf=(0.1,),
                         pgd_steps=10, pgd_restarts=1, queries=100, bootstrap=500,
                         region_steps=8, linear_steps=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--families", nargs="+", metavar="FAMILY",
                        default=["vgg", "resnet", "densenet", "transformer"],
                        help="families to train and check, by name or alias (default: vgg "
                             "resnet densenet transformer; 'vit' is the transformer's alias "
                             "and the name of its model)")
    parser.add_argument("--no-adversarial", action="store_true",
                        help="skip the adversarially trained models")
    parser.add_argument("--cache-dir", default=None,
                        help="weights cache (default: $FIMBOUND_CACHE or ~/.cache/fimbound)")
    add_check_options(parser, _demo_settings(), workers="one per core")
    add_run_options(parser, default_out="fimbound-demo")


def _model_names(families: list[str]) -> list[str]:
    """The toolkit model of each family (``transformer`` or ``vit`` -> ``vit``), in order."""
    from bounds.families import get_family
    from numeric.errors import InputError
    from numeric.models import MODEL_FAMILIES
    by_family = {family: model for model, family in MODEL_FAMILIES.items()}
    names = []
    for name in families:
        family = get_family(name).name  # unknown: one line listing the known families
        if family not in by_family:
            raise InputError(f"demo: expected a family with a toolkit model "
                             f"({', '.join(by_family)}), got {name!r}.")
        if by_family[family] not in names:
            names.append(by_family[family])
    return names


def run(args: argparse.Namespace) -> int:
    import functools

    from numeric.check.pipeline import ModelToCheck
    from numeric.check.run import command_line, ensure_writable, run_check
    from numeric.data import load_data
    from numeric.runner import run_context
    from numeric.training import available_cores, trained_model, trained_models

    import torch

    settings = settings_from(args)
    names = _model_names(args.families)
    out = ensure_writable(args.out)
    # the demo's models are tiny: one thread per process is fastest, and the cores go to
    # the worker processes (several threads on a busy machine spin instead of computing)
    torch.set_num_threads(1)
    ctx = run_context(args.device or "cpu", True if args.distributed else None)
    start = time.perf_counter()
    data = load_data("digits", samples=settings.samples, split="test", seed=settings.seed)
    modes = (False,) if args.no_adversarial else (False, True)
    wanted = [(name, adversarial) for name in names for adversarial in modes]
    talk = ctx.is_main and not (args.quiet or args.json)
    workers = args.workers or available_cores()
    modules = trained_models(wanted, seed=settings.seed, cache_dir=args.cache_dir,
                             workers=workers if ctx.is_main else 1,
                             progress=talk and sys.stderr.isatty())
    models = [ModelToCheck(name=f"{name}-{'pgd' if adversarial else 'std'}",
                           spec=f"fimbound:{name}", module=module.to(ctx.device).eval(),
                           training="pgd" if adversarial else "normal",
                           recipe=functools.partial(trained_model, name,
                                                    adversarial=adversarial,
                                                    seed=settings.seed,
                                                    cache_dir=args.cache_dir,
                                                    progress=False))
              for (name, adversarial), module in zip(wanted, modules)]
    loading = time.perf_counter() - start
    if talk:
        print(f"[demo] {len(models)} models ready in {loading:.0f} s; checking "
              f"{len(data)} digits test samples each", file=sys.stderr)
    result = run_check(models, data, settings, out=out, ctx=ctx, resume=not args.no_resume,
                       data_key={"data": "digits", "seed": settings.seed},
                       command=command_line(getattr(args, "argv", None)),
                       announce=announcer(args, ctx), seconds={"train or load": loading},
                       workers=workers if ctx.device.type == "cpu" else 1)
    if result is None:
        return 0
    status = print_outcome(result, out / "report.md", as_json=args.json)
    if talk:
        print(f"[demo] done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return status
