"""Issue 7: a torchrun launch with 2 gloo ranks reproduces the single-process check, and a
killed run resumes without recomputing what it had finished."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MODEL = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))
'''

FAST = ["--data", "digits", "--samples", "12", "--chunk-size", "4", "--queries", "30",
        "--attack-steps", "20", "--attack-restarts", "1", "--pgd-steps", "5",
        "--pgd-restarts", "1", "--pgd-l2", "0.5", "--pgd-linf", "0.05"]

PER_SAMPLE = ("lambda_max", "local_bound", "trace", "blackbox", "attack_radius",
              "certified_radius", "margin")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _check(tmp_path: Path, out: str, launcher: list[str], extra=(), **popen
            ) -> subprocess.Popen:
    args = [*launcher, "-m", "numeric.cli", "check", "--model",
            str(tmp_path / "net.py") + ":build", *FAST, "--out", str(tmp_path / out), *extra]
    return subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    return stderr


def _samples(tmp_path: Path, out: str) -> list[dict]:
    document = json.loads((tmp_path / out / "results.json").read_text())
    return document["models"][0]["samples"]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert [r["index"] for r in a] == [r["index"] for r in b] == list(range(12))
    for ra, rb in zip(a, b):
        for key in PER_SAMPLE:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-12), (ra["index"], key)
        assert ra["pred"] == rb["pred"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist")
    (path / "net.py").write_text(MODEL)
    return path


@pytest.fixture(scope="module")
def single(workdir):
    _finish(_check(workdir, "single", [sys.executable], ["--quiet"]))
    return _samples(workdir, "single")


def test_two_gloo_ranks_reproduce_one_process(workdir, single):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    _finish(_check(workdir, "two", launcher, ["--quiet"]))
    _assert_same(single, _samples(workdir, "two"))
    logs = sorted((workdir / "two" / ".progress").rglob("*.jsonl"))
    assert [p.name.rsplit(".", 2)[1] for p in logs] == ["rank0", "rank1"]


def test_killed_run_resumes_and_skips_finished_chunks(workdir, single):
    proc = _check(workdir, "killed", [sys.executable], ["--quiet"])
    progress = workdir / "killed" / ".progress"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(progress.rglob("*.jsonl")) if progress.exists() else []
        if logs and logs[0].read_text().count("\n") >= 2:  # the header and one chunk
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "killed" / "report.md").exists()
    (log,) = progress.rglob("*.jsonl")
    done_before = _logged_chunks(log)
    assert 1 <= len(done_before) < 3
    stderr = _finish(_check(workdir, "killed", [sys.executable]))
    assert f"resumed {len(done_before)}/3 chunks" in stderr
    assert "rerun the same command to resume" in stderr
    assert sorted(_logged_chunks(log)) == [0, 1, 2], "a finished chunk was computed twice"
    _assert_same(single, _samples(workdir, "killed"))


def _logged_chunks(log: Path) -> list[int]:
    entries = []
    for line in log.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the chunk in flight when the run was killed
    assert "header" in entries[0]
    return [entry["chunk"] for entry in entries[1:]]


def _default_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, not a background job


def test_ctrl_c_stops_every_worker_in_one_line_and_the_rerun_resumes(workdir, single):
    proc = _check(workdir, "ctrl-c", [sys.executable], ["--workers", "2", "--quiet"],
                  start_new_session=True, preexec_fn=_default_interrupts)
    progress = workdir / "ctrl-c" / ".progress"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(progress.rglob("samples.worker*.jsonl")) if progress.exists() else []
        if any(log.read_text().count("\n") >= 2 for log in logs):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert stderr.strip().splitlines() == [
        "fimbound check: interrupted; run the same command again to resume where it stopped"]
    stderr = _finish(_check(workdir, "ctrl-c", [sys.executable]))
    assert "build: resumed" in stderr
    _assert_same(single, _samples(workdir, "ctrl-c"))
