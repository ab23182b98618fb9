"""Throughput of ``fimbound check`` with 1 and 2 processes on the CPU, and ``fimbound demo``.

Each configuration runs the same check (two small CNNs on digits; the toolkit's attack and
its refinement, so that the attack does not dominate) in a fresh process tree and reports
samples per second of wall-clock time, start-up included: one process with
one thread, one process with two threads, two worker processes (``--workers 2``, one
model each) and two gloo ranks (``torchrun``, chunks shared). Then ``fimbound demo`` is
timed from an empty weights cache (training included) and from the filled cache, with one
process and with one worker per core. All are measured one after the other in the same
run, so the ratios compare like with like; the absolute times depend on what else the
machine is doing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = '''
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 10))

def wide():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(256, 10))
'''


def _time(cmd: list[str], cwd: Path, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def _check_rows(cwd: Path, samples: int) -> list[tuple[str, float]]:
    args = ["-m", "numeric.cli", "check", "--model", "net.py:build", "--model", "net.py:wide",
            "--data", "digits", "--samples", str(samples), "--chunk-size", "8",
            "--no-resume", "--quiet", "--attack-steps", "50", "--attacks", "toolkit",
            "refine", "--pgd-steps", "10"]
    one = [sys.executable, *args, "--out", "one"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", *args, "--out", "two"]
    return [("1 process, 1 thread", _time(one, cwd, 1)),
            ("1 process, 2 threads", _time(one, cwd, 2)),
            ("2 worker processes (--workers 2), 1 thread each",
             _time([*one, "--workers", "2"], cwd, 1)),
            ("2 processes (torchrun, gloo), 1 thread each", _time(two, cwd, 1))]


def _demo_rows(cwd: Path, quick: bool) -> list[tuple[str, float]]:
    demo = [sys.executable, "-m", "numeric.cli", "demo", "--quiet", "--no-resume",
            "--cache-dir", str(cwd / "cache")]
    if quick:
        demo += ["--families", "vgg", "resnet"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return [(f"demo, empty weights cache (trains), {cores} worker(s)",
             _time([*demo, "--out", "cold"], cwd, 1)),
            ("demo from the weights cache, 1 process",
             _time([*demo, "--workers", "1", "--out", "warm1"], cwd, 1)),
            (f"demo from the weights cache, {cores} worker(s)",
             _time([*demo, "--out", "warm"], cwd, 1))]


def run(quick: bool = False) -> str:
    samples = 32 if quick else 96
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "net.py").write_text(MODEL)
        rows = _check_rows(cwd, samples)
        demo = _demo_rows(cwd, quick)
    base = rows[0][1]
    lines = ["## Parallel check and demo (CPU)", "",
             f"`fimbound check` of two small CNNs on {samples} digits samples each, wall "
             "clock including start-up. GPU: none lent to this run, so the CUDA rows "
             "(torchvision resnet18 / vit_b_16 at 224×224) are not measured here.", "",
             "| configuration | seconds | samples/s | speed-up vs 1 process |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {t:.1f} | {2 * samples / t:.2f} | {base / t:.2f}× |"
              for name, t in rows]
    lines += ["", "`fimbound demo` (" + ("vgg and resnet only, quick mode" if quick else
                                        "8 models") + "), wall clock:", "",
              "| configuration | seconds |", "|---|---|"]
    lines += [f"| {name} | {t:.1f} |" for name, t in demo]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
