"""Throughput of ``fimbound check`` with 1 and 2 processes on the CPU (issue 7).

Each configuration runs the same check (a small CNN on digits) in a fresh process tree and
reports samples per second of wall-clock time, start-up included. One process with one
thread, one process with two threads and two gloo ranks with one thread each are measured
one after the other in the same run, so the ratios compare like with like.
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
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 10))
'''


def _time(cmd: list[str], cwd: Path, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def run(quick: bool = False) -> str:
    samples = 64 if quick else 450  # the whole digits test split
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "net.py").write_text(MODEL)
        args = ["-m", "numeric.cli", "check", "--model", "net.py:build", "--data", "digits",
                "--samples", str(samples), "--chunk-size", "8", "--no-resume", "--quiet",
                "--attack-steps", "50", "--pgd-steps", "10"]
        one = [sys.executable, *args, "--out", "one"]
        two = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", *args, "--out", "two"]
        rows = [("1 process, 1 thread", _time(one, cwd, 1)),
                ("1 process, 2 threads", _time(one, cwd, 2)),
                ("2 processes (gloo), 1 thread each", _time(two, cwd, 1))]
    base = rows[0][1]
    lines = ["## Distributed scaling (CPU)", "",
             f"`fimbound check` of a small CNN on {samples} digits samples, wall clock "
             "including start-up. GPU: none lent to this run, so the CUDA rows "
             "(torchvision resnet18 / vit_b_16 at 224×224) are not measured here.", "",
             "| configuration | seconds | samples/s | speed-up vs 1 process |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {t:.1f} | {samples / t:.2f} | {base / t:.2f}× |"
              for name, t in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
