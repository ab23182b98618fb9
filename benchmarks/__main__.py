"""Run every benchmark side by side and rewrite ``benchmarks/RESULTS.md``.

Each module in :data:`MODULES` defines ``run(quick: bool = False) -> str`` returning a
Markdown section; timings inside one section are measured in the same process, one after
the other, and reported as ratios. ``python -m benchmarks --quick`` runs smaller problems.

The GPU section (:mod:`benchmarks.gpu`, torchvision models at 224x224) always comes last:
it is measured when a GPU is present and otherwise says "not run: no GPU" in every row.
``python -m benchmarks --gpu`` runs only that section and replaces it in the existing
RESULTS.md (with the header's GPU line), leaving the CPU sections as they were.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import platform
import sys
from pathlib import Path

MODULES = ("benchmarks.estimators", "benchmarks.blackbox", "benchmarks.tightness",
           "benchmarks.distributed", "benchmarks.derive", "benchmarks.conv_norms",
           "benchmarks.lipsdp", "benchmarks.attacks")


def _header() -> str:
    import numpy
    import sympy
    import torch
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return "\n".join([
        "# fimbound benchmark results",
        "",
        f"Written by `make bench` on {datetime.date.today().isoformat()}.",
        "",
        f"- machine: {platform.machine()}, {platform.processor() or 'unknown cpu'}, "
        f"torch threads {torch.get_num_threads()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {numpy.__version__}, sympy {sympy.__version__}",
        f"- GPU: {cuda}",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller problems")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these modules (e.g. estimators tightness)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--gpu", action="store_true",
                        help="only the GPU section, put into the existing RESULTS.md")
    args = parser.parse_args(argv)
    if args.gpu:
        return _gpu_only(Path(args.out), args.quick)
    sections = [_header()]
    for name in MODULES:
        short = name.rsplit(".", 1)[1]
        if args.only is not None and short not in args.only:
            continue
        if importlib.util.find_spec(name) is None:
            continue
        print(f"[bench] {short} ...", file=sys.stderr, flush=True)
        sections.append(importlib.import_module(name).run(quick=args.quick))
    if args.only is None or "gpu" in args.only:
        print("[bench] gpu ...", file=sys.stderr, flush=True)
        sections.append(importlib.import_module("benchmarks.gpu").run(quick=args.quick))
    Path(args.out).write_text("\n\n".join(sections) + "\n")
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    return 0


def _gpu_only(out: Path, quick: bool) -> int:
    """Replace the GPU section (and the header's GPU line) of ``out``; keep the rest."""
    import re

    from benchmarks.gpu import TITLE, run
    print("[bench] gpu ...", file=sys.stderr, flush=True)
    section = run(quick=quick)
    text = out.read_text() if out.exists() else _header()
    start = text.find(TITLE)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        following = re.search(r"^## ", text[start + len(TITLE):], flags=re.MULTILINE)
        end = len(text) if following is None else start + len(TITLE) + following.start()
        rest = text[end:]
        text = text[:start] + section + "\n" + ("\n" + rest if rest else "")
    gpu_line = next(line for line in _header().splitlines() if line.startswith("- GPU:"))
    text = re.sub(r"^- GPU: .*$", gpu_line, text, count=1, flags=re.MULTILINE)
    out.write_text(text)
    print(f"[bench] wrote the GPU section of {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
