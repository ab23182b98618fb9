"""Symbolic derivation at scale, and the start-up cost of the command line.

For chains and DAGs (residual blocks, dense blocks) of about 500 and 5,000 nodes, with
symbolic constants (``h[l]``) and with float constants, the time of
:func:`bounds.validate`, :func:`bounds.derive`, :meth:`bounds.Bound.evaluate` and
:func:`bounds.propagate`, measured one after the other in this process. The ratio of the
5,000-node time to the 500-node time is about 10 when the cost is linear in the graph
(the derivation used to re-multiply every product at every node: quadratic, and a
5,000-node chain did not finish in 25 minutes).

Then the CPU seconds (user + system, from ``resource.getrusage`` of the child) of
``fimbound --help`` and ``fimbound rank`` in fresh interpreters: the parser imports no
torch and no SymPy, and ``rank`` imports SymPy only.
"""

from __future__ import annotations

import random
import resource
import subprocess
import sys
import time

import networkx as nx

__all__ = ["run"]


def _chain(size: int, symbolic: bool) -> nx.DiGraph:
    import sympy
    h = sympy.IndexedBase("h", positive=True)
    rng = random.Random(0)
    G = nx.DiGraph(name=f"chain{size}")
    G.add_node("x", op="input")
    u = "x"
    for i in range(1, size - 1):
        key = f"n{i}"
        if i % 2:
            G.add_node(key, op="linear", lipschitz=h[i] if symbolic else rng.uniform(0.9, 1.1))
        else:
            G.add_node(key, op="relu")
        G.add_edge(u, key)
        u = key
    G.add_node("y", op="output")
    G.add_edge(u, "y")
    return G


def _family(kind: str, size: int, symbolic: bool) -> nx.DiGraph:
    import bounds
    if kind == "residual":
        G = bounds.resnet(max(1, size // 6))     # 6 nodes per basic block
    else:
        G = bounds.densenet((8,) * max(1, size // 38))   # 38 nodes per 8-layer block
    if not symbolic:
        rng = random.Random(0)
        for _, data in G.nodes(data=True):
            if "lipschitz" in data:
                data["lipschitz"] = rng.uniform(0.9, 1.1)
    return G


def _timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def _row(kind: str, size: int, symbolic: bool) -> dict:
    import bounds
    G = _chain(size, symbolic) if kind == "chain" else _family(kind, size, symbolic)
    seconds = {}
    seconds["validate"], _ = _timed(lambda: bounds.validate(G))
    seconds["derive"], bound = _timed(lambda: bounds.derive(G))
    values = {str(s): 1.01 for s in bound.symbols} if symbolic else {}
    seconds["evaluate"], evaluated = _timed(lambda: bound.evaluate(values))
    seconds["propagate"], propagated = _timed(lambda: bounds.propagate(G, values,
                                                                       check=False))
    if propagated < evaluated.lipschitz * (1 - 1e-9):
        raise AssertionError(f"derive benchmark: propagate ({propagated}) below evaluate "
                             f"({evaluated.lipschitz}) on {kind}{size}")
    return {"kind": kind, "nodes": G.number_of_nodes(), "edges": G.number_of_edges(),
            "constants": "symbolic" if symbolic else "float", **seconds}


def _cpu_seconds(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import sys; from numeric.cli import main; "
                    "sys.exit(main(sys.argv[1:]))", *argv], check=True,
                   capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(quick: bool = False) -> str:
    """Markdown section: derivation times by graph size, and command-line start-up."""
    sizes = (200, 2000) if quick else (500, 5000)
    rows = [_row(kind, size, symbolic) for kind in ("chain", "residual", "dense")
            for symbolic in (True, False) for size in sizes]
    lines = ["## Symbolic derivation at scale (bounds.derive)", "",
             f"Graphs of about {sizes[0]} and {sizes[1]} nodes; seconds on one CPU core, "
             "measured one after the other in one process. *ratio* is the time of the large "
             "graph over the small one for `derive` (about "
             f"{sizes[1] // sizes[0]} when linear).", "",
             "| graph | constants | nodes | edges | validate | derive | evaluate | propagate "
             "| derive ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for small, large in zip(rows[::2], rows[1::2]):
        for row in (small, large):
            ratio = f"{large['derive'] / small['derive']:.1f}" if row is large else ""
            lines.append(f"| {row['kind']} | {row['constants']} | {row['nodes']} | "
                         f"{row['edges']} | {row['validate']:.2f} | {row['derive']:.2f} | "
                         f"{row['evaluate']:.2f} | {row['propagate']:.2f} | {ratio} |")
    help_cpu = _cpu_seconds(["--help"])
    rank_cpu = _cpu_seconds(["rank"])
    lines += ["", "## Command-line start-up", "",
              "CPU seconds (user + system) of a fresh `fimbound` process (goal: at most 1 s).",
              "", "| command | CPU s |", "|---|---:|",
              f"| `fimbound --help` | {help_cpu:.2f} |", f"| `fimbound rank` | {rank_cpu:.2f} |"]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(run(quick="--quick" in sys.argv))
