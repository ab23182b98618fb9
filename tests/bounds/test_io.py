"""bounds.read_graph / write_graph: exact round trips and clear errors."""

import json

import networkx as nx
import pytest
import sympy
from hypothesis import given, settings

import bounds
from bounds import GraphFormatError, GraphValidationError, read_graph, write_graph
from tests.bounds.strategies import architectures


def _as_json(value):
    """``value`` as JSON gives it back: tuples become lists."""
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_json(item) for item in value]
    return value


def assert_same(G, H):
    assert nx.utils.graphs_equal(G, H)
    for node, data in G.nodes(data=True):
        for key, value in data.items():
            other = H.nodes[node][key]
            assert type(other) is type(value) or isinstance(value, str), (node, key)


@settings(max_examples=40)
@given(architectures())
def test_round_trip_of_random_graphs(tmp_path_factory, G):
    path = tmp_path_factory.mktemp("graphs") / "g.json"
    for node, value in G.nodes(data="lipschitz"):
        if isinstance(value, str):  # strings come back as the SymPy values they denote
            G.nodes[node]["lipschitz"] = bounds.parse_constant(value)
    for node, params in G.nodes(data="params"):
        if params is not None:  # tuples come back as lists
            G.nodes[node]["params"] = _as_json(params)
    write_graph(G, path)
    assert_same(G, read_graph(path))


def _pooling_chain(maxpool_params, avgpool_params):
    G = nx.DiGraph([("x", "pool"), ("pool", "avg"), ("avg", "y")])
    nx.set_node_attributes(G, {"x": "input", "pool": "maxpool", "avg": "avgpool",
                               "y": "output"}, "op")
    G.nodes["pool"]["params"] = maxpool_params
    G.nodes["avg"]["params"] = avgpool_params
    return G


def test_pooling_params_as_lists_round_trip_exactly(tmp_path):
    G = _pooling_chain({"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1]},
                       {"kernel_size": 2, "stride": 1, "ndim": 2})
    write_graph(G, tmp_path / "g.json")
    H = read_graph(tmp_path / "g.json")
    assert_same(G, H)
    assert H.nodes["pool"]["params"] == {"kernel_size": [3, 3], "stride": [2, 2],
                                         "padding": [1, 1]}
    assert H.nodes["avg"]["params"] == {"kernel_size": 2, "stride": 1, "ndim": 2}
    assert bounds.derive(H).lipschitz == bounds.derive(G).lipschitz == 2


def test_pooling_params_as_tuples_come_back_as_lists_with_the_same_constant(tmp_path):
    G = _pooling_chain({"kernel_size": (3, 3), "stride": (2, 2)}, {"kernel_size": (2,)})
    write_graph(G, tmp_path / "g.json")
    H = read_graph(tmp_path / "g.json")
    assert H.nodes["pool"]["params"] == {"kernel_size": [3, 3], "stride": [2, 2]}
    assert H.nodes["avg"]["params"] == {"kernel_size": [2]}
    for node in ("pool", "avg"):
        assert bounds.node_lipschitz(H, node) == bounds.node_lipschitz(G, node)
    assert bounds.derive(H).lipschitz == bounds.derive(G).lipschitz == 2 / sympy.sqrt(2)


def test_ambiguous_pooling_node_in_a_file_is_refused(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"directed": True, "nodes": [
        {"id": "x", "op": "input"},
        {"id": "pool1", "op": "maxpool", "params": {"kernel_size": 3, "stride": 2}},
        {"id": "y", "op": "output"}],
        "edges": [{"source": "x", "target": "pool1"}, {"source": "pool1", "target": "y"}]}))
    with pytest.raises(GraphValidationError, match=r"node 'pool1' \(op 'maxpool'\) expected "
                       r"kernel_size/stride as lists .*or params\['ndim'\]"):
        read_graph(path)


@pytest.mark.parametrize("G", [
    bounds.vgg(4), bounds.resnet((1, 2), projection="all", stem=True, head=True),
    bounds.densenet((2, 1), bottleneck=True), bounds.transformer(2, heads=3, shared=True)],
    ids=["vgg", "resnet", "densenet", "transformer"])
def test_round_trip_of_families(tmp_path, G):
    path = tmp_path / "family.json"
    write_graph(G, path)
    H = read_graph(path)
    assert_same(G, H)
    assert bounds.derive(H).lipschitz == bounds.derive(G).lipschitz


def test_file_is_node_link_json_with_strings_for_sympy(tmp_path):
    G = bounds.vgg(2, shared=True)
    G.nodes["conv1"]["lipschitz"] = sympy.Float(0.1) * sympy.Symbol("h", positive=True)
    G.nodes["fc1"]["lipschitz"] = 0.30000000000000004
    write_graph(G, tmp_path / "g.json")
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["directed"] is True and "edges" in data and "links" not in data
    nodes = {node["id"]: node for node in data["nodes"]}
    assert nodes["conv1"]["lipschitz"] == "0.1*h"
    assert nodes["fc1"]["lipschitz"] == 0.30000000000000004
    H = read_graph(tmp_path / "g.json")
    assert H.nodes["conv1"]["lipschitz"] == G.nodes["conv1"]["lipschitz"]
    assert H.nodes["fc1"]["lipschitz"] == G.nodes["fc1"]["lipschitz"]


def test_hand_written_file_is_read(tmp_path):
    path = tmp_path / "mlp.json"
    path.write_text(json.dumps({"directed": True, "multigraph": False, "graph": {"name": "mlp"},
                                "nodes": [{"id": "x", "op": "input"},
                                          {"id": "fc", "op": "linear", "lipschitz": "2*w"},
                                          {"id": "act", "op": "gelu"},
                                          {"id": "y", "op": "output"}],
                                "edges": [{"source": "x", "target": "fc"},
                                          {"source": "fc", "target": "act"},
                                          {"source": "act", "target": "y"}]}))
    bound = bounds.derive(read_graph(path))
    w = sympy.Symbol("w", positive=True)
    assert bound.name == "mlp"
    assert bound.lipschitz == 2 * w * bounds.node_lipschitz(read_graph(path), "act")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="read_graph: no such file .*nope.json"):
        read_graph(tmp_path / "nope.json")


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"nodes": [')
    with pytest.raises(GraphFormatError, match="bad.json' is not valid JSON"):
        read_graph(path)


@pytest.mark.parametrize(("document", "match"), [
    ([1, 2], "expected a node-link dict, got list"),
    ({"edges": []}, "with 'nodes' and 'edges' lists"),
    ({"directed": False, "nodes": [], "edges": []}, "expected a directed graph"),
    ({"nodes": [{"op": "input"}], "edges": []}, "malformed node-link document"),
], ids=["list", "no-nodes", "undirected", "node-without-id"])
def test_not_a_node_link_document(tmp_path, document, match):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(document))
    with pytest.raises(GraphFormatError, match=match):
        read_graph(path)


def test_schema_violation_on_read_names_the_node(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"directed": True, "nodes": [
        {"id": "x", "op": "input"}, {"id": "sum", "op": "add"}, {"id": "y", "op": "output"}],
        "edges": [{"source": "x", "target": "sum"}, {"source": "sum", "target": "y"}]}))
    with pytest.raises(GraphValidationError, match="node 'sum' \\(op 'add'\\) expected at "
                       "least 2 predecessors, got 1"):
        read_graph(path)


def test_unsafe_constant_in_a_file(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"directed": True, "nodes": [
        {"id": "x", "op": "input"},
        {"id": "fc", "op": "linear", "lipschitz": "__import__('os').getcwd()"},
        {"id": "y", "op": "output"}],
        "edges": [{"source": "x", "target": "fc"}, {"source": "fc", "target": "y"}]}))
    with pytest.raises(GraphValidationError, match="node 'fc'.*arithmetic expression"):
        read_graph(path)


def test_write_validates_and_refuses_unserialisable_attributes(tmp_path):
    G = bounds.vgg(1)
    G.nodes["fc1"]["weights"] = object()
    with pytest.raises(GraphValidationError, match="node 'fc1' has an attribute that JSON "
                       "cannot store"):
        write_graph(G, tmp_path / "g.json")
    G = bounds.vgg(1)
    G.remove_edge("fc1", "logits")
    with pytest.raises(GraphValidationError, match="node"):
        write_graph(G, tmp_path / "g.json")
    assert not (tmp_path / "g.json").exists()
