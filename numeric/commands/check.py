"""``fimbound check``: bounds vs measured Fisher spectra vs attacks on real models."""

from __future__ import annotations

import argparse
import time

from numeric.commands._common import add_run_options, print_outcome

HELP = "check bounds against measured Fisher spectra and attacks, with a report"
DESCRIPTION = """\
For every model and every test sample: the certified global and local bounds on
lambda_max(F(x)), the exact lambda_max (exact or Lanczos by K), tr F, the black-box
estimate, the smallest L2 perturbation a minimum-norm attack finds, PGD robustness at
stated radii, and the certified radius margin / (sqrt(2) L). Then soundness (any bound
below a measurement exits with status 3 and names the sample), tightness, rank
correlations with bootstrap intervals, and the robustness rankings with Kendall tau.

Writes DIR/report.md, DIR/results.json and PNG figures (atomically); prints a summary.
Every finished chunk of samples is logged in DIR/.progress at once: if the run stops
(Ctrl-C, a crash, a full disk), rerun the same command and it resumes; `fimbound report
DIR` rebuilds the report from the log without recomputing.

Models:  torchvision:NAME (random init unless --weights), fimbound:NAME, FILE.py:FACTORY
         (random-init weights are seeded by --seed: same command, same numbers)
Data:    digits | lfw | folder:PATH | cifar10:PATH | npz:PATH (MedMNIST arrays)

examples:
  fimbound check --model fimbound:vgg --weights vgg.pt --data digits --samples 50
  fimbound check --model a.py:build --model b.py:build --data npz:chest.npz --out rep
  fimbound check --model torchvision:resnet18 --data folder:imgs --size 224 --channels 3
  torchrun --nproc_per_node 2 -m numeric.cli check --model ... --data ...
exit status: 0 sound, 3 soundness violation, 2 bad input (nothing computed), 1 a bug."""


def add_check_options(parser: argparse.ArgumentParser, defaults=None,
                      workers: str = "1") -> None:
    """Sample and attack settings shared with ``demo`` (``defaults``: a CheckSettings;
    ``workers``: the default of ``--workers`` as shown in the help)."""
    from numeric.check.results import CheckSettings
    d = defaults or CheckSettings()
    parser.add_argument("--samples", type=int, default=d.samples,
                        help=f"test samples per model (default: {d.samples})")
    parser.add_argument("--queries", type=int, default=d.queries,
                        help=f"black-box query budget per input (default: {d.queries})")
    parser.add_argument("--attack-steps", type=int, default=d.attack_steps,
                        help=f"minimum-norm attack steps (default: {d.attack_steps})")
    parser.add_argument("--attack-restarts", type=int, default=d.attack_restarts,
                        help=f"minimum-norm attack restarts (default: {d.attack_restarts})")
    parser.add_argument("--attacks", nargs="+", default=list(d.attacks), metavar="NAME",
                        help="members of the minimum-norm attack ensemble (default: "
                             + (" ".join(d.attacks) if d.attacks else
                                "the full ensemble of numeric.attacks") + ")")
    parser.add_argument("--pgd-l2", type=float, nargs="*", default=list(d.pgd_l2),
                        metavar="EPS", help=f"PGD-L2 radii (default: {list(d.pgd_l2)})")
    parser.add_argument("--pgd-linf", type=float, nargs="*", default=list(d.pgd_linf),
                        metavar="EPS", help=f"PGD-Linf radii (default: {list(d.pgd_linf)})")
    parser.add_argument("--pgd-steps", type=int, default=d.pgd_steps,
                        help=f"PGD steps (default: {d.pgd_steps})")
    parser.add_argument("--pgd-restarts", type=int, default=d.pgd_restarts,
                        help=f"PGD random restarts (default: {d.pgd_restarts})")
    parser.add_argument("--region-steps", type=int, default=d.region_steps, metavar="N",
                        help=f"grid points per factor 256 of radius of the region "
                             f"certificate (about 1.6 N region passes per chunk); 0 keeps "
                             f"the global radius only, for large models "
                             f"(default: {d.region_steps})")
    parser.add_argument("--linear-steps", type=int, default=d.linear_steps, metavar="N",
                        help=f"bisection passes of the linear-bound (CROWN) certified "
                             f"radius, for networks of affine maps, ReLU and max pooling "
                             f"(each pass about 0.5-2 s per sample on the demo's CNNs); 0 "
                             f"skips it (default: {d.linear_steps})")
    parser.add_argument("--bootstrap", type=int, default=d.bootstrap,
                        help=f"bootstrap resamples of every interval (default: {d.bootstrap})")
    parser.add_argument("--chunk-size", type=int, default=d.chunk_size,
                        help=f"samples per unit of work and of resumption "
                             f"(default: {d.chunk_size})")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes computing models (or parts of one) side by side "
                             f"on the CPU; the numbers do not change, beyond the last "
                             f"digits of eigensolvers run with another thread count "
                             f"(default: {workers})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="SPEC",
                        help="model to check; repeat to compare several side by side")
    parser.add_argument("--weights", action="append", default=[], metavar="PATH",
                        help="state dict for the model at the same position (give one per "
                             "--model, or none)")
    parser.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="display name for the model at the same position (default: "
                             "the torchvision/fimbound name or the factory's)")
    parser.add_argument("--data", default="digits", metavar="SPEC",
                        help="digits | lfw | folder:PATH | cifar10:PATH | npz:PATH "
                             "(default: digits)")
    parser.add_argument("--size", type=int, default=None, metavar="PIXELS",
                        help="resize the images to PIXELS x PIXELS (e.g. 224 for ImageNet "
                             "models; default: as stored)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="convert the images to 1 (grey) or 3 (RGB, the channel "
                             "repeated) channels; torchvision models need 3")
    add_check_options(parser)
    add_run_options(parser, default_out="fimbound-report")


def settings_from(args: argparse.Namespace):
    """The :class:`CheckSettings` of the command line (refusing impossible values)."""
    from numeric.check.results import CheckSettings
    from numeric.errors import InputError
    for flag in ("samples", "queries", "attack_steps", "pgd_steps", "chunk_size", "bootstrap"):
        if getattr(args, flag) < 1:
            raise InputError(f"check: expected --{flag.replace('_', '-')} >= 1, "
                             f"got {getattr(args, flag)}.")
    if args.linear_steps < 0:
        raise InputError(f"check: expected --linear-steps >= 0, got {args.linear_steps}.")
    if args.region_steps < 0:
        raise InputError(f"check: expected --region-steps >= 0, got {args.region_steps}.")
    for flag in ("attack_restarts", "pgd_restarts"):
        if getattr(args, flag) < 1:
            raise InputError(f"check: expected --{flag.replace('_', '-')} >= 1, "
                             f"got {getattr(args, flag)}.")
    radii = args.pgd_l2 + args.pgd_linf
    if any(not e > 0 or e == float("inf") for e in radii):
        raise InputError(f"check: expected positive finite PGD radii, got {radii}.")
    if args.seed < 0:
        raise InputError(f"check: expected --seed >= 0, got {args.seed}.")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"check: expected --workers >= 1, got {args.workers}.")
    if args.attacks:
        from numeric.attacks import ATTACKS, available_attacks
        usable = available_attacks()
        for name in args.attacks:
            if name not in usable:
                why = "needs a library that is not installed" if name in ATTACKS else \
                    "is unknown"
                raise InputError(f"check: expected --attacks from {', '.join(usable)}, got "
                                 f"{name!r}, which {why}.")
    return CheckSettings(samples=args.samples, chunk_size=args.chunk_size, seed=args.seed,
                         queries=args.queries, attack_steps=args.attack_steps,
                         attack_restarts=args.attack_restarts, attacks=tuple(args.attacks),
                         pgd_l2=tuple(args.pgd_l2),
                         pgd_linf=tuple(args.pgd_linf), pgd_steps=args.pgd_steps,
                         pgd_restarts=args.pgd_restarts, bootstrap=args.bootstrap,
                         region_steps=args.region_steps, linear_steps=args.linear_steps)


def announcer(args: argparse.Namespace, ctx):
    """Notes on stderr unless ``--quiet``/``--json`` or not rank 0; progress bars too when
    stderr is a terminal (in a log file they would be one endless line)."""
    import sys

    from numeric.check.run import Announcer
    talk = ctx.is_main and not (args.quiet or args.json)
    return Announcer(notes=talk, bars=talk and sys.stderr.isatty())


def run(args: argparse.Namespace) -> int:
    import functools

    from numeric.check.pipeline import ModelToCheck
    from numeric.check.run import command_line, ensure_writable, run_check
    from numeric.data import load_data
    from numeric.errors import InputError
    from numeric.loading import display_names, load_model
    from numeric.runner import run_context

    settings = settings_from(args)
    for flag, values in (("--weights", args.weights), ("--name", args.name)):
        if values and len(values) != len(args.model):
            raise InputError(f"check: expected one {flag} per --model ({len(args.model)}), "
                             f"got {len(values)}.")
    names = args.name or display_names(args.model)
    if len(set(names)) != len(names):
        raise InputError(f"check: expected distinct model names, got {names}; use --name.")
    if args.size is not None and args.size < 1:
        raise InputError(f"check: expected --size >= 1, got {args.size}.")
    out = ensure_writable(args.out)  # before anything slow
    ctx = run_context(args.device, True if args.distributed else None)
    start = time.perf_counter()
    data = load_data(args.data, samples=settings.samples, split="test", seed=settings.seed,
                     size=args.size, channels=args.channels)
    models = []
    for name, spec, path in zip(names, args.model, args.weights or [None] * len(names)):
        module = load_model(spec, path, num_classes=data.num_classes, device=ctx.device,
                            seed=settings.seed)
        recipe = functools.partial(load_model, spec, path, num_classes=data.num_classes,
                                   seed=settings.seed)
        models.append(ModelToCheck(name=name, spec=spec, module=module, recipe=recipe))
    loading = time.perf_counter() - start
    result = run_check(models, data, settings, out=out, ctx=ctx, resume=not args.no_resume,
                       data_key={"data": args.data, "size": args.size,
                                 "channels": args.channels, "seed": settings.seed},
                       command=command_line(getattr(args, "argv", None)),
                       announce=announcer(args, ctx), seconds={"load": loading},
                       workers=args.workers or 1)
    if result is None:  # not rank 0
        return 0
    return print_outcome(result, out / "report.md", as_json=args.json)
