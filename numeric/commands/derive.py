"""``fimbound derive``: the closed-form bound of a model or graph file, and its value.

A graph file needs no torch (only :mod:`bounds`); a model is traced with
:func:`numeric.trace_model` once, and its certified numbers come from that trace.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from numeric.errors import InputError

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "closed-form Lipschitz and Fisher bounds of a model or an architecture graph"
DESCRIPTION = """\
From a torch model (traced with torch.export; every constant certified: SVD for linear
layers, a certified bound for convolutions, the proved rules of the theory package for
activations, pooling, LayerNorm and attention) or from an architecture-graph JSON file:
the closed form of the bound on Lip(f) of the logits and on
lambda_max(F(x)) <= Lip(f)^2 / 2, and their values.

For a model the closed form is written with one symbol per layer constant (L_<module>),
whose certified values are listed; --local adds the bounds at data samples, computed
from the actual activations and probabilities.

For a graph file, constants that are not real numbers >= 0 at the given values (h - 3 at
h = 1, sqrt(h - 4), a NaN) are refused naming the node; a node with constant 0 makes
everything after it constant (0 times oo is 0). A graph file needs no torch.

Models:  torchvision:NAME (random init unless --weights), fimbound:NAME, FILE.py:FACTORY
Graphs:  a JSON node-link file (bounds.write_graph); give symbol values with --value.

examples:
  fimbound derive --model torchvision:resnet18 --input-shape 3,64,64
  fimbound derive --model fimbound:vgg --weights vgg.pt --local --data digits --samples 20
  fimbound derive --model net.py:build --input-shape 1,28,28 --write-graph net.json
  fimbound derive net.json --value h=1.2 --json
exit status: 0 done, 2 bad input (unreadable file, unknown operation, a constant that is
not a real number >= 0, missing symbol), 3 a certified value below a measured one (a bug
the self-check caught), 1 an internal error."""

#: Closed forms with more operations than this are printed in one line, not pretty.
_PRETTY_LIMIT = 400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", nargs="?", default=None, metavar="GRAPH.json",
                        help="an architecture-graph file (instead of --model)")
    parser.add_argument("--model", default=None, metavar="SPEC",
                        help="torchvision:NAME, fimbound:NAME or FILE.py:FACTORY")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="state dict to load into the model")
    parser.add_argument("--input-shape", default=None, metavar="C,H,W",
                        help="shape of one input (default: 3,224,224 for torchvision, "
                             "1,8,8 for fimbound models; required for FILE.py models)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of logits for torchvision/fimbound builders")
    parser.add_argument("--plain", action="store_true",
                        help="no BatchNorm folding, logit centring or pooling merge: the "
                             "plain product of the layer norms")
    parser.add_argument("--conv-method", default="auto",
                        choices=("auto", "dense", "grid", "torus"),
                        help="how convolutions are bounded: dense (exact SVD of the "
                             "unrolled operator, small inputs only), grid or torus (FFT "
                             "bounds on the zero-padded grid), auto (the cheapest certified "
                             "one; default)")
    parser.add_argument("--local", action="store_true",
                        help="also the local bounds at data samples (needs --data)")
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help="digits | lfw | folder:PATH | cifar10:PATH | npz:PATH")
    parser.add_argument("--samples", type=int, default=10,
                        help="samples for --local (default: 10)")
    parser.add_argument("--write-graph", default=None, metavar="PATH",
                        help="also write the traced graph as JSON")
    parser.add_argument("--value", action="append", default=[], metavar="NAME=NUMBER",
                        help="value of a symbol of a graph file (repeatable; a real number "
                             ">= 0, inf allowed)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of a random-init model's weights (default: 0)")


def _shape(text: str | None, spec: str) -> tuple[int, ...]:
    if text is None:
        if spec.startswith("torchvision:"):
            return (3, 224, 224)
        if spec.startswith("fimbound:"):
            return (1, 8, 8)
        raise InputError("derive: expected --input-shape C,H,W for a FILE.py model.")
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise InputError(f"derive: expected --input-shape as positive integers C,H,W, "
                         f"got {text!r}.")
    return shape


def _values(pairs: list[str]) -> dict[str, float]:
    values = {}
    for pair in pairs:
        name, sep, number = pair.partition("=")
        try:
            values[name.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InputError(f"derive: expected --value NAME=NUMBER, got {pair!r}.")
    return values


def _symbolic(G):
    """Copy of G with every weighted node constant replaced by a positive symbol
    ``L_<module>`` (the torch module's qualified name, else the node's; made unique);
    returns (graph, {symbol name: value})."""
    import sympy

    H = G.copy()
    values = {}
    for node, data in H.nodes(data=True):
        value = data.get("lipschitz")
        if value is None or data["op"] == "output":
            continue
        if float(value) == 1.0:
            data["lipschitz"] = sympy.Integer(1)
            continue
        base = name = "L_" + re.sub(r"\W", "_", str(data.get("module") or node))
        suffix = 1
        while name in values:
            suffix += 1
            name = f"{base}_{suffix}"
        data["lipschitz"] = sympy.Symbol(name, positive=True)
        values[name] = float(value)
    return H, values


def _render(expr) -> str:
    import sympy
    if sympy.count_ops(expr) > _PRETTY_LIMIT:
        return sympy.sstr(expr)
    return sympy.pretty(expr, use_unicode=False, num_columns=100)


def _from_graph_file(args) -> dict:
    import bounds

    G = bounds.read_graph(args.graph)
    bound = bounds.derive(G)
    values = _values(args.value)
    document = {"source": args.graph, "name": G.graph.get("name"),
                "certified": bound.certified, "closed_form": str(bound.lipschitz),
                "fisher_closed_form": str(bound.fisher),
                "symbols": [str(s) for s in bound.symbols], "values": values,
                "_pretty": _render(bound.lipschitz)}
    missing = [str(s) for s in bound.symbols if str(s) not in values]
    if missing:
        document["missing"] = missing
    else:
        evaluated = bound.evaluate(values)
        document.update(lipschitz=evaluated.lipschitz, fisher=evaluated.fisher)
    return document


def _load(args):
    import torch

    from numeric.loading import load_model

    model = load_model(args.model, args.weights, num_classes=args.num_classes,
                       seed=args.seed)
    shape = _shape(args.input_shape, args.model)
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()),
                 torch.float32)
    return model, torch.zeros(1, *shape, dtype=dtype), shape


def _from_model(args) -> dict:
    import bounds
    from numeric.graph import trace_model
    from numeric.validation import check_positive_int

    if args.local and args.data is None:
        raise InputError("derive: --local needs --data SPEC.")
    check_positive_int("derive", "--samples", args.samples)
    model, example, shape = _load(args)
    traced = trace_model(model, example, fold_batchnorm=not args.plain,
                         centre_logits=not args.plain, merge_pooling=not args.plain,
                         conv_method=args.conv_method)
    reason = traced.unbounded_reason()
    if reason is not None and not args.local:
        from numeric.errors import UnsupportedModuleError
        raise UnsupportedModuleError(f"derive: no global bound: {reason}; --local --data SPEC "
                                     f"gives certified bounds at the data's points.")
    G = traced.graph
    if args.write_graph:
        bounds.write_graph(G, args.write_graph)
    symbolic, values = _symbolic(G)
    bound = bounds.derive(symbolic)
    centred = bool(G.graph.get("centred_logits", False))
    document = {"source": args.model, "input_shape": list(shape), "nodes": G.number_of_nodes(),
                "certified": traced.certified, "plain": args.plain,
                "closed_form": str(bound.lipschitz), "fisher_closed_form": str(bound.fisher),
                "constants": values,
                "lipschitz": traced.lipschitz_bound("centred_output" if centred else "output"),
                "fisher": traced.fisher_bound(), "centred_logits": centred,
                "_pretty": _render(bound.lipschitz)}
    if args.local:
        from numeric.data import load_data
        data = load_data(args.data, samples=args.samples, split="test",
                         size=tuple(shape[1:]) if len(shape) == 3 else None)
        x = data.x.to(example.dtype)
        if tuple(x.shape[1:]) != tuple(shape):
            raise InputError(f"derive: expected data samples of shape {tuple(shape)} (the "
                             f"model input), got {tuple(x.shape[1:])}.")
        local = traced.local_fisher_bound(x)
        document["local"] = {"data": args.data, "samples": len(local),
                             "fisher": local.tolist(), "max": float(local.max()),
                             "median": float(local.median())}
    return document


def _text(document: dict) -> str:
    status = "certified" if document["certified"] else "NOT certified (estimated constants)"
    lines = [f"{document['source']}: {status}"]
    if "input_shape" in document:
        lines[0] += (f", input {'x'.join(map(str, document['input_shape']))}, "
                     f"{document['nodes']} graph nodes"
                     + (", plain product" if document["plain"] else ""))
    lines += ["", "Lip(f) <=", document["_pretty"], "",
              "lambda_max(F(x)) <= Lip(f)^2 / 2"]
    constants = document.get("constants") or document.get("values") or {}
    if constants:
        lines += ["", "where"]
        width = max(len(name) for name in constants)
        lines += [f"  {name:<{width}} = {value:.6g}" for name, value in constants.items()]
    if "missing" in document:
        lines += ["", f"no value for {', '.join(document['missing'])} (give --value NAME=X)"]
    else:
        lines += ["", f"Lipschitz bound:  {document['lipschitz']:.6g}",
                  f"Fisher bound:     {document['fisher']:.6g}"]
    if document.get("centred_logits"):
        lines.append("(the last layer's constant is that of the centred logits, "
                     "(I - 11^T/K) W, on which the Fisher information depends)")
    if "local" in document:
        local = document["local"]
        lines.append(f"local Fisher bounds on {local['samples']} samples of {local['data']}: "
                     f"median {local['median']:.6g}, max {local['max']:.6g}")
    return "\n".join(lines)


def _finite(value):
    """JSON has no infinity: non-finite floats become strings, in dicts too."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def run(args: argparse.Namespace) -> int:
    if (args.graph is None) == (args.model is None):
        raise InputError("derive: expected either a GRAPH.json file or --model SPEC.")
    if args.graph is not None and (args.local or args.weights):
        raise InputError("derive: --local and --weights need --model, not a graph file.")
    document = _from_graph_file(args) if args.graph is not None else _from_model(args)
    if args.json:
        import json
        clean = {k: _finite(v) for k, v in document.items() if not k.startswith("_")}
        print(json.dumps(clean, indent=1, allow_nan=False))
    else:
        print(_text(document), file=sys.stdout)
    return 0
