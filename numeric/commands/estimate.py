"""``fimbound estimate``: the input-Fisher spectral norm of a model on a data set."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from numeric.commands._common import (add_run_options, file_fingerprint, print_json,
                                      progress_factory)

HELP = "measure lambda_max (and tr) of the input Fisher information on data samples"
DESCRIPTION = """\
For every sample x of the data: lambda_max(F(x)) of F(x) = J^T (diag p - p p^T) J by
the chosen method, optionally the top-k eigenvalues and the trace, with per-sample
convergence (an iterative method that misses its tolerance is reported, never hidden).

Methods:  auto (exact for K <= 32, else Lanczos), exact, lanczos, power (the paper's),
          blackbox (probabilities only: sketch of J J^T from finite differences),
          max_rayleigh (the paper's black-box recipe, biased low; for comparison).
Models:   torchvision:NAME (random init unless --weights), fimbound:NAME, FILE.py:FACTORY
Data:     digits | lfw | folder:PATH | cifar10:PATH | npz:PATH (MedMNIST arrays)

Black-box estimates carry a standard error and the bias correction subtracted (a
parametric bootstrap; --no-debias reports the plain sketch). --device cpu | cuda | cuda:N
| auto picks where the model runs; every path computes without autocast or TF32.

Writes DIR/results.json atomically (the document --json prints). Samples are processed
in chunks that are logged as they finish, so an interrupted run resumes where it stopped.

examples:
  fimbound estimate --model fimbound:vgg --data digits --samples 200
  fimbound estimate --model torchvision:resnet18 --data cifar10:~/cifar --size 32 \\
      --method lanczos --device cuda --out runs/r18 --json
  fimbound estimate --model net.py:build --data npz:chest.npz --method blackbox --queries 400
exit status: 0 done (see "converged"), 2 bad input."""

METHODS = ("auto", "exact", "lanczos", "power", "blackbox", "max_rayleigh")
TRACES = ("none", "exact", "hutchinson", "hutch++")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="torchvision:NAME, fimbound:NAME or FILE.py:FACTORY")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="state dict to load into the model")
    parser.add_argument("--data", default="digits", metavar="SPEC",
                        help="digits | lfw | folder:PATH | cifar10:PATH | npz:PATH "
                             "(default: digits)")
    parser.add_argument("--samples", type=int, default=100,
                        help="test samples (default: 100; a stratified seeded subset)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize images to SIZE x SIZE (default: as stored)")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="estimator of lambda_max (default: auto)")
    parser.add_argument("--k", type=int, default=1,
                        help="number of top eigenvalues (exact / lanczos; default: 1)")
    parser.add_argument("--tol", type=float, default=None,
                        help="relative residual tolerance of lanczos / power "
                             "(default: sqrt(machine epsilon) of the dtype)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="iteration limit of lanczos / power")
    parser.add_argument("--queries", type=int, default=200,
                        help="black-box evaluations per input, base point included "
                             "(default: 200)")
    parser.add_argument("--no-debias", action="store_true",
                        help="blackbox: report the plain sketch, without the bootstrap "
                             "bias correction")
    parser.add_argument("--trace", choices=TRACES, default="none",
                        help="also estimate tr F(x) (default: none)")
    parser.add_argument("--num-probes", type=int, default=64,
                        help="probes of hutchinson / hutch++ (default: 64)")
    parser.add_argument("--dtype", choices=("model", "float64"), default="model",
                        help="computation dtype (default: the model's)")
    parser.add_argument("--chunk-size", type=int, default=32,
                        help="samples per batch and unit of resumption (default: 32)")
    add_run_options(parser, default_out="fimbound-estimate")


def _check_arguments(args: argparse.Namespace) -> None:
    for flag in ("samples", "k", "queries", "num_probes", "chunk_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"estimate: expected --{flag.replace('_', '-')} >= 1, "
                             f"got {getattr(args, flag)}.")
    if args.max_iter is not None and args.max_iter < 1:
        raise ValueError(f"estimate: expected --max-iter >= 1, got {args.max_iter}.")
    if args.tol is not None and not args.tol > 0:
        raise ValueError(f"estimate: expected --tol > 0, got {args.tol}.")
    if args.k > 1 and args.method in ("power", "blackbox", "max_rayleigh"):
        raise ValueError(f"estimate: --k {args.k} needs --method auto, exact or lanczos, "
                         f"got {args.method}.")


def _estimate_chunk(model, x, args, generator) -> tuple[list[dict], str]:
    """Per-sample records (without index and label) for one batch; the method that ran."""
    import torch

    from numeric.fisher import (blackbox_fisher_top_eigenvalue, fisher_top_eigenvalue,
                                fisher_trace)

    predicted = _predict(model, x)
    records = [{"predicted": p} for p in predicted]
    if args.method in ("blackbox", "max_rayleigh"):
        def predict_proba(z):
            with torch.no_grad():
                return torch.softmax(model(z), dim=-1)
        method = "sketch" if args.method == "blackbox" else "max_rayleigh"
        result = blackbox_fisher_top_eigenvalue(predict_proba, x, args.queries, method=method,
                                                debias=not args.no_debias,
                                                generator=generator)
        for i, r in enumerate(records):
            r.update(lambda_max=float(result.values[i]), converged=True,
                     queries=int(result.queries[i]))
            if result.standard_error is not None:
                r["standard_error"] = float(result.standard_error[i])
            if result.bias is not None:
                r["bias_correction"] = float(result.bias[i])
        resolved = args.method
    else:
        values, diagnostics = fisher_top_eigenvalue(
            model, x, args.method, k=args.k, max_iter=args.max_iter, tol=args.tol,
            generator=generator, return_diagnostics=True)
        values = values.reshape(len(records), -1).double().cpu()
        for i, r in enumerate(records):
            r.update(lambda_max=float(values[i, 0]),
                     converged=bool(diagnostics.converged[i]),
                     iterations=int(diagnostics.iterations[i]),
                     relative_residual=float(diagnostics.residuals[i].max()))
            if args.k > 1:
                r["top_eigenvalues"] = values[i].tolist()
        resolved = diagnostics.method
    if args.trace != "none":
        traces = fisher_trace(model, x, args.trace, num_probes=args.num_probes,
                              generator=generator).double().cpu()
        for r, t in zip(records, traces.tolist()):
            r["trace"] = t
    for r in records:
        r["method"] = resolved
    return records, resolved


def _predict(model, x) -> list[int]:
    import torch

    from numeric.errors import InputError
    try:
        with torch.no_grad():
            logits = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise InputError(f"estimate: the model failed on data of shape {tuple(x.shape)} "
                         f"({type(err).__name__}: {str(err).strip().splitlines()[0]}); "
                         f"check --size and the model's input channels.") from err
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise InputError(f"estimate: expected the model to return logits of shape (B, K), "
                         f"got {getattr(logits, 'shape', type(logits).__name__)}.")
    return logits.argmax(dim=-1).tolist()


def _summary(records: list[dict], seconds: float) -> dict:
    import torch

    def stats(key: str) -> dict | None:
        values = [r[key] for r in records if key in r]
        if not values:
            return None
        t = torch.tensor(values, dtype=torch.float64)
        q = torch.quantile(t, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        return {"mean": float(t.mean()), "median": q[1], "q10": q[0], "q90": q[2],
                "min": float(t.min()), "max": float(t.max())}

    accuracy = sum(r["predicted"] == r["label"] for r in records) / len(records)
    not_converged = [r["index"] for r in records if not r["converged"]]
    return {"samples": len(records), "accuracy": accuracy, "lambda_max": stats("lambda_max"),
            "trace": stats("trace"), "not_converged": not_converged,
            "seconds": round(seconds, 3)}


def _text(document: dict) -> str:
    s = document["summary"]
    lam = s["lambda_max"]
    lines = [f"model {document['model']} on {document['data']} ({s['samples']} samples, "
             f"accuracy {s['accuracy']:.3f}), method {document['method']} "
             f"-> {document['resolved_method']}",
             f"lambda_max: median {lam['median']:.6g}  mean {lam['mean']:.6g}  "
             f"q10 {lam['q10']:.6g}  q90 {lam['q90']:.6g}  max {lam['max']:.6g}"]
    if s["trace"] is not None:
        lines.append(f"trace:      median {s['trace']['median']:.6g}  "
                     f"mean {s['trace']['mean']:.6g}")
    lines.append(f"time {s['seconds']:.2f} s; results: {document['results']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from numeric.data import load_data
    from numeric.device import resolve_device
    from numeric.loading import load_model
    from numeric.report import write_json_atomic
    from numeric.runner import (ResultLog, chunk_generator, evaluate_chunks, gather_records,
                                run_context, run_key)

    _check_arguments(args)
    device = str(resolve_device(args.device, caller="estimate"))
    ctx = run_context(device, True if args.distributed else None)
    data = load_data(args.data, samples=args.samples, split="test", seed=args.seed,
                     size=args.size)
    model = load_model(args.model, args.weights, num_classes=data.num_classes,
                       device=ctx.device)
    dtype = torch.float64 if args.dtype == "float64" else next(
        (t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
    model = model.to(dtype)
    settings = {key: getattr(args, key) for key in
                ("method", "k", "tol", "max_iter", "queries", "no_debias", "trace",
                 "num_probes", "dtype", "chunk_size", "seed", "samples", "size")}
    key = run_key(model=args.model, weights=file_fingerprint(args.weights), data=args.data,
                  **settings)
    out = Path(args.out)
    log = None if args.no_resume else ResultLog(out / ".progress" / key
                                                / f"estimate.rank{ctx.rank}.jsonl")
    resolved: set[str] = set()

    def compute(chunk_id: int, indices: range) -> list[dict]:
        index = list(indices)
        x = data.x[index].to(device=ctx.device, dtype=dtype)
        records, method = _estimate_chunk(model, x, args,
                                          chunk_generator(args.seed, chunk_id, "cpu"))
        resolved.add(method)
        for i, r in zip(index, records):
            r.update(index=i, label=int(data.y[i]))
        return records

    quiet = args.quiet or args.json or not sys.stderr.isatty()
    start = time.perf_counter()
    mine = evaluate_chunks(compute, len(data.y), chunk_size=args.chunk_size, ctx=ctx,
                           log=log, progress=progress_factory(quiet, ctx.is_main))
    records = gather_records(mine, ctx)
    if records is None:  # not rank 0
        return 0
    methods = sorted({r["method"] for r in records} | resolved)
    results = out / "results.json"
    document = {
        "command": "estimate", "model": args.model, "weights": args.weights,
        "data": data.name, "num_classes": data.num_classes,
        "input_shape": list(data.x.shape[1:]), "device": str(ctx.device),
        "dtype": str(dtype).replace("torch.", ""), "method": args.method,
        "resolved_method": methods[0] if len(methods) == 1 else methods,
        "settings": settings, "summary": _summary(records, time.perf_counter() - start),
        "records": records, "results": str(results)}
    write_json_atomic(document, results)
    if args.json:
        print_json(document)
    else:
        print(_text(document))
    missed = document["summary"]["not_converged"]
    if missed:
        print(f"fimbound estimate: warning: {len(missed)} samples did not converge "
              f"(indices {missed[:10]}{' ...' if len(missed) > 10 else ''}); raise --max-iter "
              f"or --tol, or use --method exact.", file=sys.stderr)
    return 0
