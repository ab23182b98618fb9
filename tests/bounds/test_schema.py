"""bounds.validate: one test per documented error, and what is allowed."""

import math

import networkx as nx
import pytest
import sympy

import bounds
from bounds import GraphValidationError, OPS, node_lipschitz, parse_constant, validate


def chain(*ops, **attrs):
    """input -> ops... -> output, nodes named by op (weighted ops get lipschitz 'w')."""
    G = nx.DiGraph()
    G.add_node("x", op="input")
    u = "x"
    for i, op in enumerate(ops):
        key = f"{op}{i}"
        G.add_node(key, op=op)
        if OPS[op].needs_lipschitz:
            G.nodes[key]["lipschitz"] = "w"
        G.add_edge(u, key)
        u = key
    G.add_node("y", op="output")
    G.add_edge(u, "y")
    for key, value in attrs.items():
        G.nodes[key].update(value)
    return G


def test_vocabulary_matches_the_contract():
    kinds = {op: spec.kind for op, spec in OPS.items()}
    assert kinds["constant"] == "structural" and OPS["constant"].max_inputs == 0
    assert kinds["select"] == "unit" and kinds["add"] == "sum"
    assert kinds["concat"] == "concatenation" and OPS["concat"].min_inputs == 2
    assert {op for op, k in kinds.items() if k == "weighted"} == {
        "linear", "conv", "batchnorm", "layernorm", "attention", "scale", "embedding",
        "function"}
    assert set(bounds.KINDS) == set(kinds.values())
    with pytest.raises(TypeError):
        OPS["new"] = None


def test_valid_chain_and_family_graphs_pass():
    """A valid graph validates, and its derived bound is the one its rules give."""
    G = chain("linear", "relu", "maxpool", "dropout",
              maxpool2={"params": {"kernel_size": [2, 2]}})
    assert validate(G) is None
    assert bounds.derive(G).lipschitz == sympy.Symbol("w", positive=True)
    for family, builder, depth in (("vgg", bounds.vgg, 3), ("resnet", bounds.resnet, 2),
                                   ("densenet", bounds.densenet, (2, 2)),
                                   ("transformer", bounds.transformer, 2)):
        options = {"heads": 2} if family == "transformer" else {}
        G = builder(depth, **options)
        assert validate(G) is None
        assert sympy.simplify(bounds.derive(G).lipschitz - bounds.closed_form(
            family, depth, **options)) == 0


def test_not_a_digraph():
    with pytest.raises(GraphValidationError, match="expected a networkx.DiGraph, got Graph"):
        validate(nx.Graph())
    with pytest.raises(GraphValidationError, match="got MultiDiGraph"):
        validate(nx.MultiDiGraph())


def test_empty_graph():
    with pytest.raises(GraphValidationError, match="got an empty graph"):
        validate(nx.DiGraph())


def test_node_keys_are_strings():
    G = chain("relu")
    G.add_edge(3, "y")
    with pytest.raises(GraphValidationError, match="node 3 has a key of type int"):
        validate(G)


def test_missing_op():
    G = chain("relu")
    del G.nodes["relu0"]["op"]
    with pytest.raises(GraphValidationError, match="node 'relu0' has no 'op' attribute"):
        validate(G)


def test_unknown_op():
    G = chain("relu")
    G.nodes["relu0"]["op"] = "swish2"
    with pytest.raises(GraphValidationError, match="node 'relu0' has unknown op 'swish2'"):
        validate(G)


def test_no_input_and_several_inputs():
    G = chain("relu")
    G.nodes["x"]["op"] = "constant"
    with pytest.raises(GraphValidationError, match="exactly one 'input' node, got 0"):
        validate(G)
    G = chain("add")
    G.add_node("x2", op="input")
    G.add_edge("x2", "add0")
    with pytest.raises(GraphValidationError,
                       match="exactly one 'input' node, got 2: 'x', 'x2'"):
        validate(G)


def test_several_outputs():
    G = chain("relu")
    G.add_node("y2", op="output")
    G.add_edge("relu0", "y2")
    with pytest.raises(GraphValidationError, match="exactly one 'output' node, got 2"):
        validate(G)


def test_cycle():
    G = chain("relu", "tanh", "add")
    G.add_edge("add2", "relu0")
    with pytest.raises(GraphValidationError, match="lies on a cycle: .*'relu0'.*'add2'"):
        validate(G)


@pytest.mark.parametrize(("op", "preds", "expected"), [
    ("add", 1, "at least 2 predecessors, got 1"),
    ("concat", 1, "at least 2 predecessors, got 1"),
    ("linear", 2, "exactly 1 predecessor, got 2"),
    ("relu", 0, "exactly 1 predecessor, got 0"),
    ("constant", 1, "no predecessors, got 1"),
], ids=["add-one-input", "concat-one-input", "linear-two-inputs", "relu-no-input",
        "constant-with-input"])
def test_arity(op, preds, expected):
    G = nx.DiGraph()
    G.add_node("x", op="input")
    G.add_node("t", op="tanh")
    G.add_edge("x", "t")
    G.add_node("v", op=op, **({"lipschitz": 1} if OPS[op].needs_lipschitz else {}))
    G.add_edges_from([("x", "v"), ("t", "v")][:preds])
    G.add_node("m", op="concat")
    G.add_edges_from([("v", "m"), ("t", "m")])
    G.add_node("y", op="output")
    G.add_edge("m", "y")
    with pytest.raises(GraphValidationError, match=f"node 'v' \\(op '{op}'\\) expected {expected}"):
        validate(G)


def test_the_example_message_of_the_contract():
    G = chain("linear")
    G.add_node("add3", op="add")
    G.add_edge("linear0", "add3")
    G.remove_edge("linear0", "y")
    G.add_edge("add3", "y")
    with pytest.raises(GraphValidationError, match=r"^validate: node 'add3' \(op 'add'\) "
                       r"expected at least 2 predecessors, got 1\.$"):
        validate(G)


@pytest.mark.parametrize("node, edge, message", [
    (("c", "constant"), ("c", "x"),
     r"node 'x' \(op 'input'\) expected no predecessors, got 1"),
    (("after", "relu"), ("y", "after"),
     r"node 'y' \(op 'output'\) expected no successors, got 1"),
    (("aux", "tanh"), ("relu0", "aux"),
     "node 'aux' is unreachable: no path leads from it to the output node 'y'"),
], ids=["input with a predecessor", "output with a successor", "unreachable node"])
def test_misplaced_edges(node, edge, message):
    G = chain("relu")
    G.add_node(node[0], op=node[1])
    G.add_edge(*edge)
    with pytest.raises(GraphValidationError, match=message):
        validate(G)


def test_constant_subgraphs_are_allowed():
    """A branch fed only by a constant validates and contributes 0 to the bound."""
    G = chain("concat")
    G.add_nodes_from([("token", {"op": "constant"}), ("expand", {"op": "reshape"})])
    G.add_edges_from([("token", "expand"), ("expand", "concat0")])
    assert validate(G) is None
    bound = bounds.derive(G)
    assert bound.node_constants["token"] == bound.node_constants["expand"] == 0
    assert bound.lipschitz == 1  # sqrt(1**2 + 0**2)


def test_weighted_op_needs_lipschitz():
    G = chain("linear")
    del G.nodes["linear0"]["lipschitz"]
    with pytest.raises(GraphValidationError, match="node 'linear0' \\(op 'linear'\\) needs a "
                       "'lipschitz' attribute"):
        validate(G)


@pytest.mark.parametrize("op", ["add", "concat", "constant", "input"])
def test_lipschitz_refused_where_it_follows_from_the_schema(op):
    G = chain("relu", "add") if op == "add" else chain("relu", "concat")
    G.add_edge("x", "add1" if op == "add" else "concat1")
    node = {"add": "add1", "concat": "concat1", "input": "x"}.get(op)
    if op == "constant":
        G.add_node("c", op="constant")
        G.add_edge("c", "concat1")
        node = "c"
    G.nodes[node]["lipschitz"] = 1
    with pytest.raises(GraphValidationError, match=f"node '{node}' \\(op '{op}'\\) takes no "
                       "'lipschitz' attribute"):
        validate(G)


@pytest.mark.parametrize("value", [-1, -0.5, math.nan, sympy.Integer(-2),
                                   sympy.Symbol("m", negative=True), sympy.I, "-a"],
                         ids=["int", "float", "nan", "sympy", "negative-symbol", "imaginary",
                              "string"])
def test_lipschitz_not_negative(value):
    G = chain("linear", linear0={"lipschitz": value})
    with pytest.raises(GraphValidationError, match="expected 'lipschitz' >= 0"):
        validate(G)


@pytest.mark.parametrize("value", [True, [1, 2], {"a": 1}, None],
                         ids=["bool", "list", "dict", "none"])
def test_lipschitz_of_wrong_type(value):
    G = chain("linear", linear0={"lipschitz": value})
    with pytest.raises(GraphValidationError, match="expected 'lipschitz' to be a number"):
        validate(G)


@pytest.mark.parametrize(("text", "match"), [
    ("a.__class__", "expected an arithmetic expression"),
    ("__import__('os')", "expected an arithmetic expression"),
    ("lambda: 1", "expected an arithmetic expression"),
    ("[x for x in y]", "got the name 'for'"),
    ("open(1)", "unknown function 'open'"),
    ("2 +* 3", "cannot read"),
    ("", "expected an arithmetic expression"),
], ids=["attribute", "dunder", "lambda", "comprehension", "function", "syntax", "empty"])
def test_unreadable_or_unsafe_strings(text, match):
    G = chain("linear", linear0={"lipschitz": text})
    with pytest.raises(GraphValidationError, match=match):
        validate(G)


def test_strings_read_with_positive_symbols():
    value = parse_constant("gamma*sqrt(h_1**2 + 1) + E - E + h[2]^2")
    gamma, h1 = sympy.symbols("gamma h_1", positive=True)
    assert value == gamma * sympy.sqrt(h1**2 + 1) + sympy.IndexedBase("h", positive=True)[2]**2
    assert all(s.is_positive for s in value.free_symbols)


def test_params_must_be_a_dict():
    G = chain("relu", relu0={"params": [1]})
    with pytest.raises(GraphValidationError, match="expected 'params' to be a dict"):
        validate(G)


@pytest.mark.parametrize(("op", "params", "match"), [
    ("maxpool", {}, "kernel_size"),
    ("leaky_relu", {"slope": 2}, "negative_slope"),
    ("avgpool", {"kernel_size": [2, 2], "count_include_pad": False}, "changes the divisor"),
    ("avgpool", {"kernel_size": 0, "ndim": 1}, "expected kernel_size to be an integer >= 1, "
                                               "got 0"),
    ("maxpool", {"kernel_size": [3, 3], "stride": [2, 2, 2]}, "one entry per spatial"),
    ("maxpool", {"kernel_size": [3, 3], "ndim": 3}, r"expected 3 entries per size"),
    ("avgpool", {"kernel_size": 2, "ndim": True}, "expected ndim to be an integer >= 1, got "
                                                  "True"),
    ("celu", {"alpha": -1}, r"expected alpha > 0 .*, got alpha=-1"),
    ("elu", {"input_scale": -2}, r"expected input_scale >= 0 .*, got input_scale=-2"),
    ("prelu", {"weight": []}, r"expected weight to hold at least one number"),
    ("softplus", {"beta": 0}, r"expected beta > 0, got beta=0"),
    ("adaptive_avgpool", {"output_size": [7, 7], "input_size": [0, 1]},
     "expected input_size to be an integer >= 1, got 0"),
], ids=["maxpool-no-kernel", "leaky-relu-unknown", "avgpool-divisor", "avgpool-zero",
        "length-mismatch", "ndim-mismatch", "bool-ndim", "celu-negative-alpha",
        "elu-negative-input-scale", "prelu-empty", "softplus-beta", "adaptive-zero"])
def test_theory_rejects_params(op, params, match):
    G = chain(op, **{f"{op}0": {"params": params}})
    with pytest.raises(GraphValidationError, match=f"node '{op}0' \\(op '{op}'\\) has params "
                       f".*{match}"):
        validate(G)


def test_pooling_params_that_do_not_change_the_constant_are_accepted():
    G = chain("maxpool", "avgpool", maxpool0={"params": {
        "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": True}},
        avgpool1={"params": {"kernel_size": 2, "padding": 1, "count_include_pad": True,
                             "ndim": 1}})
    assert validate(G) is None
    assert node_lipschitz(G, "maxpool0") == 2
    assert node_lipschitz(G, "avgpool1") == sympy.sqrt(2) / 2


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("params", [{"kernel_size": 3, "stride": 2}, {"kernel_size": 2},
                                    {"kernel_size": 3, "stride": 1, "dilation": 2}],
                         ids=["kernel-stride", "kernel", "kernel-stride-dilation"])
def test_pooling_with_only_int_sizes_and_no_ndim_is_refused(op, params):
    if op == "avgpool":
        params = {key: value for key, value in params.items() if key != "dilation"}
    G = chain("linear", op, **{f"{op}1": {"params": params}})
    sizes = "/".join(params)
    with pytest.raises(GraphValidationError) as info:
        validate(G)
    message = str(info.value)
    assert message.startswith(f"validate: node '{op}1' (op '{op}') expected {sizes} as lists "
                              f"with one entry per spatial dimension or params['ndim'], got "
                              f"{params!r}")
    assert "add 'ndim': 2" in message
    with pytest.raises(GraphValidationError, match=f"node '{op}1'"):
        node_lipschitz(G, f"{op}1")


def test_pooling_states_its_dimension_by_ndim_lists_or_tuples():
    G = chain("maxpool", "maxpool", "maxpool", "avgpool", "avgpool",
              maxpool0={"params": {"kernel_size": 3, "stride": 2, "ndim": 2}},
              maxpool1={"params": {"kernel_size": [3, 3], "stride": 2}},
              maxpool2={"params": {"kernel_size": (3,), "stride": (2,)}},
              avgpool3={"params": {"kernel_size": 2, "ndim": 1}},
              avgpool4={"params": {"kernel_size": [2, 2], "stride": [2, 2]}})
    assert validate(G) is None
    assert node_lipschitz(G, "maxpool0") == node_lipschitz(G, "maxpool1") == 2
    assert node_lipschitz(G, "maxpool2") == sympy.sqrt(2)
    assert node_lipschitz(G, "avgpool3") == 1 / sympy.sqrt(2)
    assert node_lipschitz(G, "avgpool4") == sympy.Rational(1, 2)


def test_pooling_with_its_own_lipschitz_needs_no_dimension():
    # theory does not read the params of a node whose constant is given
    G = chain("maxpool", maxpool0={"params": {"kernel_size": 3, "stride": 2},
                                   "lipschitz": 2})
    assert validate(G) is None
    assert node_lipschitz(G, "maxpool0") == 2


def test_certified_must_be_bool():
    G = chain("linear", linear0={"certified": "yes"})
    with pytest.raises(GraphValidationError, match="expected 'certified' to be True or False"):
        validate(G)


def test_node_constants_of_every_kind():
    G = chain("linear", "relu", "maxpool", "select", linear0={"lipschitz": 2.5},
              relu1={"lipschitz": "1/2"}, maxpool2={"params": {"kernel_size": 3,
                                                               "stride": 1, "ndim": 1}})
    G.nodes["y"]["lipschitz"] = 3
    assert node_lipschitz(G, "x") == 1
    assert node_lipschitz(G, "linear0") == sympy.Float(2.5)
    assert node_lipschitz(G, "relu1") == sympy.Rational(1, 2)
    assert node_lipschitz(G, "maxpool2") == sympy.sqrt(3)
    assert node_lipschitz(G, "select3") == 1
    assert node_lipschitz(G, "y") == 3
    G.nodes["linear0"]["lipschitz"] = math.inf
    assert validate(G) is None and node_lipschitz(G, "linear0") == sympy.oo


def test_every_theory_activation_is_an_op_with_its_parameters():
    import theory
    unit = {"identity", "dropout", "flatten", "reshape", "permute", "select"}
    assert {op for op, spec in OPS.items() if spec.kind == "activation"} == set(
        theory.ACTIVATIONS) - unit
    G = chain("prelu", "celu", "selu", "adaptive_avgpool",
              prelu0={"params": {"weight": [0.25, -3.0]}}, celu1={"params": {"alpha": 0.5}},
              adaptive_avgpool3={"params": {"output_size": [7, 7], "input_size": [1, 1]}})
    assert validate(G) is None
    assert float(node_lipschitz(G, "prelu0")) == 3.0
    assert node_lipschitz(G, "celu1") == 1
    assert node_lipschitz(G, "selu2") == theory.activation_lipschitz("selu")
    assert node_lipschitz(G, "adaptive_avgpool3") == 7
    G.nodes["adaptive_avgpool3"]["params"] = {"output_size": 7}
    with pytest.raises(GraphValidationError, match="expected output_size as lists with one "
                                                   "entry per spatial dimension"):
        validate(G)
