"""A new per-sample quantity is a line each: a stage, a soundness comparison, a report column
and a figure, with no other change to the check (as the region-based certified radius and
region bound were added)."""

import json

import pytest

import numeric.check.analysis as analysis
import numeric.check.figures as figures
import numeric.check.pipeline as pipeline
import numeric.check.report as report
from numeric.cli import main


def _half_radius(chunk):  # a stand-in for any new certified radius
    return {"half_radius": [r / 2 for r in pipeline._certified_radius(chunk)
                            ["certified_radius"]]}


def _figure(result, path):
    path.write_bytes(b"drawn")


def test_a_new_quantity_is_one_line_per_place(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "STAGES", (*pipeline.STAGES, ("half", _half_radius)))
    monkeypatch.setattr(analysis, "SOUNDNESS_CHECKS",
                        (*analysis.SOUNDNESS_CHECKS, ("half", "half_radius", "attack_radius")))
    monkeypatch.setattr(report, "VULNERABILITY_COLUMNS", (
        *report.VULNERABILITY_COLUMNS,
        ("half radius", lambda m, a: report._fmt(m.records[0]["half_radius"]))))
    monkeypatch.setitem(figures.FIGURES, "half.png", (_figure, "Half the certified radius."))
    path = tmp_path / "net.py"
    path.write_text("from torch import nn\n"
                    "def build():\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    out = tmp_path / "out"
    status = main(["check", "--model", f"{path}:build", "--samples", "4", "--chunk-size", "4",
                   "--queries", "10", "--attack-steps", "5", "--attack-restarts", "1",
                   "--pgd-steps", "2", "--pgd-restarts", "1", "--pgd-l2", "0.5", "--pgd-linf",
                   "0.05", "--bootstrap", "20", "--quiet", "--json", "--out", str(out)])
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    samples = document["models"][0]["samples"]
    assert [r["half_radius"] for r in samples] == pytest.approx(
        [r["certified_radius"] / 2 for r in samples])
    assert "half" in samples[0]["seconds"]
    assert document["analysis"]["soundness"]["checked"] == 4 * len(analysis.SOUNDNESS_CHECKS)
    text = (out / "report.md").read_text()
    assert "| half radius |" in text and "*Half the certified radius.*" in text
    assert (out / "half.png").read_bytes() == b"drawn"
