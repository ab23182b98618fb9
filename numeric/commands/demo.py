"""``fimbound demo``: the whole story on embedded data, nothing downloaded."""

from __future__ import annotations

import argparse
import sys
import time

from numeric.commands._common import add_run_options
from numeric.commands.check import add_check_options, run_check, settings_from

HELP = "train small VGG/ResNet/DenseNet/ViT models on digits and check them (make demo)"
DESCRIPTION = """\
Trains small VGG-, ResNet-, DenseNet- and ViT-style models on scikit-learn's digits
(8x8 images, 10 classes), each normally and adversarially (PGD), with fixed seeds on the
CPU; caches the weights in $FIMBOUND_CACHE (default ~/.cache/fimbound) keyed by their
configuration; then runs `fimbound check` on all eight and writes the report.

The first run trains (a few minutes on 2 cores); later runs load the cache. The same seed
gives the same numbers on every run."""

FAMILIES = ("vgg", "resnet", "densenet", "vit")


def _demo_settings():
    from numeric.check import CheckSettings
    # sized so that a run from the weights cache takes about a minute on 2 cores; the
    # attack keeps its restarts and refinement (its strength), PGD its 20 steps
    return CheckSettings(samples=40, chunk_size=20, attack_steps=50, attack_restarts=2,
                         pgd_steps=20, pgd_restarts=1, bootstrap=1000)


DEMO_SETTINGS = _demo_settings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES,
                        help="families to train and check (default: all four)")
    parser.add_argument("--no-adversarial", action="store_true",
                        help="skip the adversarially trained models")
    parser.add_argument("--cache-dir", default=None,
                        help="weights cache (default: $FIMBOUND_CACHE or ~/.cache/fimbound)")
    add_check_options(parser, DEMO_SETTINGS)
    add_run_options(parser, default_out="fimbound-demo")


def run(args: argparse.Namespace) -> int:
    from numeric.data import load_data
    from numeric.runner import run_context
    from numeric.training import trained_model

    settings = settings_from(args)
    ctx = run_context(args.device or "cpu", True if args.distributed else None)
    start = time.perf_counter()
    data = load_data("digits", samples=settings.samples, split="test", seed=settings.seed)
    models = []
    for family in args.families:
        for adversarial in ((False,) if args.no_adversarial else (False, True)):
            model = trained_model(family, adversarial=adversarial, seed=settings.seed,
                                  cache_dir=args.cache_dir,
                                  progress=not (args.quiet or args.json) and ctx.is_main)
            name = f"{family}-{'pgd' if adversarial else 'std'}"
            models.append((name, f"fimbound:{family}", model.to(ctx.device).eval()))
    if ctx.is_main and not args.json:
        print(f"[demo] {len(models)} models ready in {time.perf_counter() - start:.0f} s; "
              f"checking {settings.samples} digits test samples each", file=sys.stderr)
    run_settings = {"demo": [m[0] for m in models], "settings": settings.__dict__,
                    "cache": args.cache_dir}
    status = run_check(models, data, settings, args, run_settings, ctx)
    if ctx.is_main and not args.json:
        print(f"[demo] done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return status
