"""``fimbound rank``: compare the closed-form bounds of architecture families.

Prints each entry's bound on Lip(f) with shared per-layer constants (every conv/linear
layer ``h``, every LayerNorm ``ell``, every attention head ``a``), the order at the given
values, and for every pair the exact condition under which the first bound is below the
second (see :func:`bounds.rank`).
"""

from __future__ import annotations

import argparse
import json

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "order the families' closed-form bounds and give the exact conditions for each pair"

DESCRIPTION = """\
Order the closed-form Lipschitz (and hence Fisher) bounds of architecture families under
shared per-layer constants, and print for every pair the exact condition, over the shared
symbols and the depths, under which the first bound is below the second.

Entries are families with symbolic depth (vgg, resnet, densenet, transformer; depth
n_<family>) or presets (vgg11, vgg13, vgg16, vgg19, resnet18, resnet34, resnet50,
resnet101, resnet152, densenet121/161/169/201, vit_b_16, vit_b_32, vit_l_16, vit_l_32,
vit_h_14). Every conv/linear layer has the constant h, every LayerNorm ell, every
attention head a. The VGG presets include torchvision's 7x7 adaptive average pooling at
its worst case over input sizes (norm 7); give the input size to use its exact norm:
--option vgg16.input_size=224.

examples:
  fimbound rank
  fimbound rank --families vgg densenet --depth vgg=n --depth densenet=n
  fimbound rank --families densenet121 vgg16 resnet18 vit_b_16 \\
      --value h=1.2 --value ell=1 --value a=1 --claim densenet121,vgg16,resnet18,vit_b_16
  fimbound rank --families resnet --option resnet.block=bottleneck --json
  fimbound rank --families vgg16 resnet18 --option vgg16.input_size=32 --value h=1.1
exit status: 0 done, 2 bad input (unknown family, option or value)."""


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return key.strip(), value.strip()


def _depth(text: str) -> tuple[str, str]:
    return _pair(text, "FAMILY=N (an int, a symbol name, or stage sizes like 2,2,2,2)")


def _value(text: str) -> tuple[str, float]:
    key, value = _pair(text, "SYMBOL=NUMBER")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SYMBOL=NUMBER, got {text!r}") from None
    return key, int(number) if number.is_integer() and "." not in value else number


def _option(text: str) -> tuple[str, str, object]:
    key, value = _pair(text, "ENTRY.OPTION=VALUE")
    entry, dot, option = key.partition(".")
    if not dot or not entry or not option:
        raise argparse.ArgumentTypeError(f"expected ENTRY.OPTION=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    if isinstance(parsed, list):
        parsed = tuple(parsed)
    return entry, option, parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fimbound rank``."""
    parser.add_argument("--families", nargs="+", default=None, metavar="NAME",
                        help="families or presets to compare (default: every registered "
                             "family: vgg, resnet, densenet, transformer)")
    parser.add_argument("--depth", action="append", type=_depth, default=[],
                        metavar="FAMILY=N",
                        help="depth of an entry: an int, a symbol name (shared between "
                             "entries given the same name) or stage sizes 2,2,2,2")
    parser.add_argument("--value", action="append", type=_value, default=[],
                        metavar="SYMBOL=X", help="numeric value of a symbol, e.g. h=1.2")
    parser.add_argument("--option", action="append", type=_option, default=[],
                        metavar="ENTRY.OPTION=VALUE",
                        help="builder option of an entry, e.g. resnet.block=bottleneck "
                             "(VALUE read as JSON when it parses)")
    parser.add_argument("--claim", metavar="A,B,...",
                        help="a claimed order, smallest bound first: print the exact "
                             "condition under which it holds")


def run(args: argparse.Namespace) -> int:
    """Rank the entries and print the result (text, or JSON with ``--json``)."""
    import sympy

    from bounds import rank
    options: dict = {}
    for entry, option, value in args.option:
        options.setdefault(entry, {})[option] = value
    ranking = rank(args.families, depths=dict(args.depth), values=dict(args.value) or None,
                   options=options)
    claim = None
    if args.claim:
        order = [name.strip() for name in args.claim.split(",") if name.strip()]
        claim = {"order": order, "condition": sympy.sstr(ranking.order_condition(order)),
                 "holds": ranking.order_holds(order)}
    if args.json:
        data = ranking.to_dict()
        if claim is not None:
            data["claim"] = claim
        print(json.dumps(data, indent=1))
        return 0
    print(ranking)
    if claim is not None:
        status = {True: "holds", False: "fails", None: "not evaluated"}[claim["holds"]]
        print(f"Claim {' < '.join(claim['order'])} holds iff {claim['condition']}"
              f"   [{status} at the given values]")
    return 0
