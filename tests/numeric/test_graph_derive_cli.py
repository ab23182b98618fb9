"""``fimbound derive``: closed form and value of a model or a graph file; user errors."""

from __future__ import annotations

import json
import re

import pytest

import bounds
from numeric.cli import EXIT_USAGE, main
from numeric.graph import CERTIFICATION_FACTOR


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_derive_small_model_json(capsys):
    assert main(["derive", "--model", "fimbound:resnet", "--json"]) == 0
    document = _json(capsys)
    assert document["certified"] is True
    # each bound is widened once for rounding: L = c P, Fisher = c P^2 / 2 = L^2 / (2 c)
    assert document["fisher"] == pytest.approx(
        document["lipschitz"] ** 2 / (2 * CERTIFICATION_FACTOR), rel=1e-12)
    assert "L_fc" in document["closed_form"]
    assert document["constants"]["L_fc"] > 0


def test_derive_plain_is_never_tighter(capsys):
    """Same seed, same random-init model: the folded graph is never looser than the plain
    product of its layers."""
    main(["derive", "--model", "fimbound:vgg", "--seed", "3", "--json"])
    graph = _json(capsys)["fisher"]
    main(["derive", "--model", "fimbound:vgg", "--seed", "3", "--plain", "--json"])
    plain = _json(capsys)["fisher"]
    assert graph <= plain


def test_derive_text_output(capsys):
    assert main(["derive", "--model", "fimbound:vgg"]) == 0
    out = capsys.readouterr().out
    assert "Lip(f) <=" in out and "Fisher bound:" in out and "certified" in out


def test_derive_torchvision_small_input(capsys):
    pytest.importorskip("torchvision")
    assert main(["derive", "--model", "torchvision:resnet18", "--input-shape", "3,32,32",
                 "--num-classes", "10", "--json"]) == 0
    assert _json(capsys)["nodes"] > 40


def test_derive_local_on_digits(capsys, tmp_path):
    path = tmp_path / "graph.json"
    assert main(["derive", "--model", "fimbound:vgg", "--local", "--data", "digits",
                 "--samples", "2", "--write-graph", str(path), "--json"]) == 0
    document = _json(capsys)
    assert len(document["local"]["fisher"]) == 2
    assert document["local"]["max"] <= document["fisher"]
    assert bounds.propagate(bounds.read_graph(path)) > 0


def test_derive_graph_file(capsys, tmp_path):
    path = tmp_path / "vgg.json"
    bounds.write_graph(bounds.vgg(2, shared=True), path)
    assert main(["derive", str(path), "--value", "h=1.5", "--json"]) == 0
    document = _json(capsys)
    assert document["lipschitz"] == pytest.approx(2.25)
    assert document["fisher"] == pytest.approx(2.25 ** 2 / 2)
    assert main(["derive", str(path)]) == 0
    assert "no value for h" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["derive"], "either a GRAPH.json file or --model"),
    (["derive", "missing.json"], "missing.json"),
    (["derive", "--model", "net.py:build"], "does not exist"),
    (["derive", "--model", "fimbound:vgg", "--input-shape", "a,b"], "--input-shape"),
    (["derive", "--model", "fimbound:vgg", "--local"], "--local needs --data"),
])
def test_derive_user_errors_exit_2(argv, match, capsys):
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_derive_unknown_op_in_graph_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    data = bounds.graph_to_data(bounds.vgg(1, shared=True))
    data["nodes"][1]["op"] = "warp_drive"
    path.write_text(json.dumps(data))
    assert main(["derive", str(path)]) == EXIT_USAGE
    assert "warp_drive" in capsys.readouterr().err


def test_derive_unsupported_module_in_user_file(tmp_path, capsys):
    source = tmp_path / "net.py"
    source.write_text(
        "import torch\n"
        "class Gate(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = torch.nn.Linear(4, 4)\n"
        "        self.b = torch.nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        return self.b(self.a(x) * x)\n"
        "def build():\n"
        "    return Gate()\n")
    assert main(["derive", "--model", f"{source}:build", "--input-shape", "4"]) == EXIT_USAGE
    assert "product of two input-dependent" in capsys.readouterr().err


def _graph_file(tmp_path, *constants):
    """input -> linear(c) ... -> output as a JSON graph file."""
    nodes = [{"id": "x", "op": "input"}]
    nodes += [{"id": f"f{i}", "op": "linear", "lipschitz": c} for i, c in enumerate(constants)]
    nodes.append({"id": "y", "op": "output"})
    ids = [node["id"] for node in nodes]
    path = tmp_path / "graph.json"
    path.write_text(json.dumps({"directed": True, "nodes": nodes, "edges": [
        {"source": a, "target": b} for a, b in zip(ids, ids[1:])]}))
    return str(path)


@pytest.mark.parametrize(("constants", "values", "match"), [
    (["h-3"], ["h=1"], r"node 'f0' \(constant h - 3\) is -2 at h=1: a Lipschitz constant is "
                       r">= 0"),
    (["nan"], [], r"node 'f0': parse_constant: 'nan' in 'nan' is not allowed: NaN is not a "
                  r"constant"),
    (["sqrt(h-4)"], ["h=1"], r"node 'f0' \(constant sqrt\(h - 4\)\) is not a real number "
                             r"at h=1"),
    (["2", "log(h)"], ["h=0.5"], r"node 'f1' \(constant log\(h\)\) is -0.69314718"),
    (["h"], ["h=nan"], r"expected the value of h to be a real number >= 0, got nan"),
    (["I*h"], ["h=1"], r"I is SymPy's imaginary unit"),
], ids=["negative", "nan-symbol", "complex", "negative-log", "nan-value", "imaginary"])
def test_graph_file_constants_that_are_not_lipschitz_constants_exit_2(
        tmp_path, capsys, constants, values, match):
    argv = ["derive", _graph_file(tmp_path, *constants), *sum((["--value", v] for v in values),
                                                            [])]
    assert main(argv) == EXIT_USAGE
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1
    assert re.search(match, err[0]), err[0]


def test_zero_then_infinity_is_zero(tmp_path, capsys):
    """A node with constant 0 is a constant map: everything after it is constant too."""
    assert main(["derive", _graph_file(tmp_path, 0, "oo"), "--json"]) == 0
    document = _json(capsys)
    assert document["lipschitz"] == 0.0 and document["fisher"] == 0.0
    assert main(["derive", _graph_file(tmp_path, "h", "oo"), "--value", "h=0", "--json"]) == 0
    assert _json(capsys)["lipschitz"] == 0.0
    assert main(["derive", _graph_file(tmp_path, "h", "oo"), "--value", "h=1", "--json"]) == 0
    assert _json(capsys)["lipschitz"] == "inf"
