"""Issue 14.1 and 14.4: same command, same numbers; a rerun resumes (and says so); results of
other weights are never mixed in; a failure after the computing loses nothing, and
`fimbound report` rebuilds the report from the results log without recomputing (or torch)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import numeric.check.pipeline as pipeline
from numeric.cli import main

MODELS = '''
from torch import nn

def build():  # random init, seeded by --seed
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))

def wide():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
'''

TINY = ["--samples", "6", "--chunk-size", "3", "--queries", "20", "--attack-steps", "10",
        "--attack-restarts", "1", "--pgd-steps", "3", "--pgd-restarts", "1", "--pgd-l2", "0.5",
        "--pgd-linf", "0.05", "--bootstrap", "50"]

#: Makes ``import torch`` fail in a fresh interpreter, as where torch is not installed.
NO_TORCH = """import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked")
sys.meta_path.insert(0, _NoTorch())
"""

PER_SAMPLE = ("lambda_max", "local_bound", "trace", "blackbox", "attack_radius",
              "certified_radius", "margin", "pred")


@pytest.fixture(autouse=True)
def small_figures(monkeypatch):
    monkeypatch.setattr("numeric.check.figures.DPI", 30)  # the figures are not the point


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "nets.py").write_text(MODELS)
    return f"{tmp_path / 'nets.py'}:build"


def _check(spec, out, *extra):
    return main(["check", "--model", spec, *TINY, "--out", str(out), *extra])


def _document(out):
    return json.loads((out / "results.json").read_text())


def _samples(out):
    return [{k: r[k] for k in PER_SAMPLE} for r in _document(out)["models"][0]["samples"]]


def _report(out, *extra):
    return main(["report", str(out), *extra])


def test_same_command_same_numbers(tmp_path, spec):
    assert _check(spec, tmp_path / "a", "--quiet") == 0
    assert _check(spec, tmp_path / "b", "--quiet") == 0
    assert _samples(tmp_path / "a") == _samples(tmp_path / "b")
    weights = [_document(tmp_path / o)["models"][0]["info"]["weights_hash"] for o in "ab"]
    assert weights[0] == weights[1] and len(weights[0]) == 16


@pytest.mark.parametrize("kind", ["file", "torchvision", "fimbound"])
def test_the_seed_seeds_random_init_weights_and_only_them(spec, kind):
    from numeric.check.pipeline import weights_hash
    from numeric.loading import load_model
    name = {"file": spec, "torchvision": "torchvision:resnet18", "fimbound": "fimbound:vit"}
    before = torch.get_rng_state()
    hashes = [weights_hash(load_model(name[kind], num_classes=10, seed=s)) for s in (0, 0, 1)]
    assert hashes[0] == hashes[1] != hashes[2]
    assert torch.equal(torch.get_rng_state(), before)


def test_a_rerun_reads_everything_back_without_computing(tmp_path, spec, capsys,
                                                          monkeypatch):
    out = tmp_path / "out"
    assert _check(spec, out, "--quiet") == 0
    first = _samples(out)

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed")
    monkeypatch.setattr(pipeline, "measure_chunk", forbidden)
    monkeypatch.setattr(pipeline, "model_info", forbidden)
    capsys.readouterr()
    assert _check(spec, out) == 0
    err = capsys.readouterr().err
    assert "build: resumed 2/2 chunks" in err
    assert "rerun the same command to resume" in err
    assert _samples(out) == first
    assert _document(out)["run"]["resumed"] == 2


def test_an_interrupted_run_reports_what_it_has_and_resumes_the_rest(tmp_path, spec, capsys,
                                                                     monkeypatch):
    out = tmp_path / "out"
    real = pipeline.measure_chunk
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[6][0])  # first sample index of the chunk
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(pipeline, "measure_chunk", interrupted)
    assert _check(spec, out, "--quiet") == 130
    assert not (out / "report.md").exists()
    assert _report(out, "--quiet") == 0
    text = (out / "report.md").read_text()
    assert "**Partial results**: 1 of 2 chunks were computed" in text
    assert _document(out)["models"][0]["samples"][-1]["index"] == 2

    calls.clear()
    monkeypatch.setattr(pipeline, "measure_chunk", lambda *a, **k: calls.append(a[6][0])
                        or real(*a, **k))
    capsys.readouterr()
    assert _check(spec, out) == 0
    assert calls == [3], "only the missing chunk is computed"
    assert "resumed 1/2 chunks" in capsys.readouterr().err
    assert "Partial results" not in (out / "report.md").read_text()
    assert [r["index"] for r in _document(out)["models"][0]["samples"]] == list(range(6))


def test_results_of_other_weights_are_never_mixed_in(tmp_path, spec, capsys):
    out = tmp_path / "out"
    assert _check(spec, out, "--quiet") == 0
    first_key = _document(out)["run"]["run_key"]
    weights = tmp_path / "other.pt"
    torch.manual_seed(5)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 10))
    torch.save(other.state_dict(), weights)
    assert _check(spec, out, "--quiet", "--weights", str(weights)) == 0
    document = _document(out)
    assert document["run"]["resumed"] == 0 and document["run"]["run_key"] != first_key
    logs = {json.loads(path.read_text().splitlines()[0])["header"]["weights"]: path
            for path in (out / ".progress").glob("*/samples.rank0.jsonl")}
    assert len(logs) == 2
    info = _document(out)["models"][0]["info"]
    mine = logs.pop(info["weights_hash"])
    (theirs,) = logs.values()
    shutil.copy(theirs, mine)  # a log moved under another model's key
    capsys.readouterr()
    assert _check(spec, out, "--quiet", "--weights", str(weights)) == 2
    assert "refusing to mix" in capsys.readouterr().err


def test_a_failure_after_the_computing_loses_nothing(tmp_path, spec, monkeypatch):
    import numeric.check.report as report
    from numeric.cli import build_parser
    out = tmp_path / "out"
    real = report.write_report

    def broken(*args, **kwargs):
        raise RuntimeError("No space left on device")
    monkeypatch.setattr(report, "write_report", broken)
    args = build_parser().parse_args(["check", "--model", spec, *TINY, "--quiet", "--out",
                                      str(out)])
    with pytest.raises(RuntimeError, match="No space left"):
        args._run(args)
    monkeypatch.setattr(report, "write_report", real)
    monkeypatch.setattr(pipeline, "measure_chunk", None)  # nothing may be recomputed
    assert _report(out, "--quiet") == 0
    assert len(_document(out)["models"][0]["samples"]) == 6


def test_report_rebuilds_the_same_results_without_torch(tmp_path, spec):
    out = tmp_path / "out"
    assert _check(spec, out, "--quiet", "--model", spec.replace(":build", ":wide")) == 0
    before = _document(out)
    for path in out.iterdir():
        if path.is_file():
            path.unlink()
    code = (NO_TORCH + "from numeric.check.run import rebuild_report, Announcer\n"
            f"rebuild_report({str(out)!r}, Announcer(notes=False, bars=False))\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    after = _document(out)
    assert after["models"] == before["models"]
    assert after["analysis"] == before["analysis"]
    assert {"load", "validate", "models"} <= set(after["run"]["seconds"])
    assert {"report.md", "bounds_vs_measured.png"} <= {p.name for p in out.iterdir()}


def test_report_of_a_folder_without_a_log_is_one_line(tmp_path, capsys):
    assert _report(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected a folder written by fimbound check" in err[0]


def test_check_resizes_and_converts_channels(tmp_path):
    path = tmp_path / "rgb.py"
    path.write_text("from torch import nn\n"
                    "def build():\n"
                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), "
                    "nn.Linear(4 * 14 * 14, 10))\n")
    out = tmp_path / "out"
    status = main(["check", "--model", f"{path}:build", *TINY, "--samples", "3", "--quiet",
                   "--size", "16", "--channels", "3", "--out", str(out)])
    assert status == 0
    assert len(_document(out)["models"][0]["samples"]) == 3


def test_workers_compute_the_same_numbers_in_other_processes(tmp_path, spec, capsys):
    other = spec.replace(":build", ":wide")
    assert _check(spec, tmp_path / "one", "--quiet", "--model", other) == 0
    capsys.readouterr()
    assert _check(spec, tmp_path / "two", "--model", other, "--workers", "2") == 0
    assert "2 jobs in 2 processes" in capsys.readouterr().err
    one, two = _document(tmp_path / "one"), _document(tmp_path / "two")
    for a, b in zip(one["models"], two["models"]):
        assert len(a["samples"]) == len(b["samples"])
        for r, q in zip(a["samples"], b["samples"]):
            # same seeds and chunks, so the same numbers; a worker runs LAPACK with one
            # thread, which may round the certified eigenvalue bounds differently (1e-11)
            assert {k: r[k] for k in PER_SAMPLE} == pytest.approx(
                {k: q[k] for k in PER_SAMPLE}, rel=1e-9)
        assert a["info"]["global_bound"] == b["info"]["global_bound"]
    writers = sorted(p.name for p in (tmp_path / "two" / ".progress").rglob("*.jsonl"))
    assert writers == ["samples.worker0.jsonl", "samples.worker1.jsonl"]
    assert two["run"]["resumed"] == 0
