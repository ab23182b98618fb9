"""Pooling constants against explicitly built operators on small 1-D and 2-D grids."""

import itertools
import math

import numpy as np
import pytest
import sympy
from sympy import Rational, Symbol

from theory import (
    adaptive_avgpool_lipschitz,
    ParameterError,
    avgpool_lipschitz,
    global_avgpool_lipschitz,
    max_window_overlap,
    maxpool_lipschitz,
)


def _window_index(shape, kernel, stride, dilation, padding):
    """Flat input indices of every window, -1 where a window reads padding."""
    per_dimension = []
    for n, k, s, dil, pad in zip(shape, kernel, stride, dilation, padding):
        extent = (k - 1) * dil + 1
        per_dimension.append([[start - pad + i * dil for i in range(k)]
                              for start in range(0, n + 2 * pad - extent + 1, s)])
    rows = []
    for windows in itertools.product(*per_dimension):
        row = []
        for position in itertools.product(*windows):
            inside = all(0 <= i < n for i, n in zip(position, shape))
            row.append(np.ravel_multi_index(position, shape) if inside else -1)
        rows.append(row)
    return np.array(rows)


def _maxpool(values, index):
    padded = np.append(values, -np.inf)  # index -1 reads the -inf padding
    return padded[index].max(axis=1)


def _avgpool_operator(shape, index):
    """The matrix of average pooling with zero padding counted in the divisor."""
    operator = np.zeros((index.shape[0], math.prod(shape)))
    for row, window in enumerate(index):
        for position in window[window >= 0]:
            operator[row, position] += 1 / index.shape[1]
    return operator


def _geometry(case):
    kernel, stride, dilation, padding = case
    return (tuple(np.atleast_1d(kernel)), tuple(np.atleast_1d(stride)),
            tuple(np.atleast_1d(dilation)), tuple(np.atleast_1d(padding)))


def _case_id(case):
    return "k{}-s{}-d{}-p{}".format(*(str(v).replace(" ", "") for v in case))


# (kernel, stride, dilation, padding); 1-D as ints, 2-D as tuples.
MAX_CASES = [
    (2, 2, 1, 0), (3, 1, 1, 0), (3, 2, 1, 1), (4, 2, 1, 0), (5, 3, 1, 2), (3, 1, 2, 0),
    (2, 2, 3, 0), (3, 2, 2, 1), (4, 3, 2, 0), (2, 3, 1, 0),
    ((2, 2), (2, 2), (1, 1), (0, 0)), ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 2), (2, 1), (1, 1), (0, 0)), ((3, 3), (2, 2), (2, 1), (1, 0)),
]
AVG_CASES = [case for case in MAX_CASES if set(np.atleast_1d(case[2])) == {1}]


def _grid(kernel, large=False):
    return (400,) if len(kernel) == 1 and large else (60,) if len(kernel) == 1 else (16, 16)


@pytest.mark.parametrize("case", MAX_CASES, ids=_case_id)
def test_window_overlap_matches_a_brute_force_count(case):
    kernel, stride, dilation, _ = _geometry(case)
    index = _window_index(_grid(kernel), kernel, stride, dilation, (0,) * len(kernel))
    counted = np.bincount(index.ravel()).max()
    assert max_window_overlap(kernel, stride, dilation) == counted
    coarse = math.prod(min(k, -(-((k - 1) * dil + 1) // s))
                       for k, s, dil in zip(kernel, stride, dilation))
    assert counted <= coarse


@pytest.mark.parametrize("case", MAX_CASES, ids=_case_id)
def test_maxpool_random_pairs_stay_below_the_bound(case):
    kernel, stride, dilation, padding = _geometry(case)
    shape = _grid(kernel)
    index = _window_index(shape, kernel, stride, dilation, padding)
    bound = float(maxpool_lipschitz(kernel, stride, dilation))
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-3):  # far pairs and near pairs (the local Jacobian regime)
        a = rng.standard_normal((100, math.prod(shape)))
        b = a + scale * rng.standard_normal(a.shape)
        for first, second in zip(a, b):
            ratio = (np.linalg.norm(_maxpool(first, index) - _maxpool(second, index))
                     / np.linalg.norm(first - second))
            assert ratio <= bound * (1 + 1e-12)


@pytest.mark.parametrize("case", MAX_CASES, ids=_case_id)
def test_maxpool_bound_is_attained_by_a_spike_in_the_most_covered_entry(case):
    kernel, stride, dilation, _ = _geometry(case)
    shape = _grid(kernel)
    index = _window_index(shape, kernel, stride, dilation, (0,) * len(kernel))
    spike = np.zeros(math.prod(shape))
    spike[np.argmax(np.bincount(index.ravel()))] = 1.0
    ratio = np.linalg.norm(_maxpool(spike, index) - _maxpool(np.zeros_like(spike), index))
    assert ratio == pytest.approx(float(maxpool_lipschitz(kernel, stride, dilation)), rel=1e-15)


@pytest.mark.parametrize("case", AVG_CASES, ids=_case_id)
def test_avgpool_operator_norm_stays_below_the_bound(case):
    kernel, stride, dilation, padding = _geometry(case)
    shape = _grid(kernel)
    operator = _avgpool_operator(shape, _window_index(shape, kernel, stride, dilation, padding))
    assert np.linalg.norm(operator, 2) <= float(avgpool_lipschitz(kernel, stride)) * (1 + 1e-12)


@pytest.mark.parametrize("kernel", [2, 3, (2, 2), (3, 2)], ids=lambda k: f"k{k}")
def test_avgpool_bound_is_exact_for_non_overlapping_windows(kernel):
    kernel = tuple(np.atleast_1d(kernel))
    shape = (60,) if len(kernel) == 1 else (12, 12)
    index = _window_index(shape, kernel, kernel, (1,) * len(kernel), (0,) * len(kernel))
    norm = np.linalg.norm(_avgpool_operator(shape, index), 2)
    assert norm == pytest.approx(float(avgpool_lipschitz(kernel)), rel=1e-12)


@pytest.mark.parametrize(("kernel", "stride"), [(2, 1), (4, 2), (6, 3), ((2, 2), (1, 1)),
                                                ((4, 2), (2, 1))],
                         ids=["k2-s1", "k4-s2", "k6-s3", "k2x2-s1x1", "k4x2-s2x1"])
def test_avgpool_bound_is_nearly_attained_when_the_stride_divides_the_kernel(kernel, stride):
    kernel, stride = tuple(np.atleast_1d(kernel)), tuple(np.atleast_1d(stride))
    shape = (400,) if len(kernel) == 1 else (24, 24)
    index = _window_index(shape, kernel, stride, (1,) * len(kernel), (0,) * len(kernel))
    norm = np.linalg.norm(_avgpool_operator(shape, index), 2)
    bound = float(avgpool_lipschitz(kernel, stride))
    assert 0.98 * bound <= norm <= bound * (1 + 1e-12)


def test_closed_forms():
    assert maxpool_lipschitz(3, 1, ndim=1) == sympy.sqrt(3)
    assert maxpool_lipschitz((3,), (1,)) == sympy.sqrt(3)
    assert maxpool_lipschitz((3, 3), (2, 2)) == 2
    assert maxpool_lipschitz(3, 2, ndim=2) == maxpool_lipschitz((3, 3), (2, 2))
    assert maxpool_lipschitz(2, 2, dilation=3, ndim=1) == 1
    assert avgpool_lipschitz((3, 3), (2, 2)) == Rational(2, 3)
    assert avgpool_lipschitz(2, 3, ndim=1) == 1 / sympy.sqrt(2)


def test_one_tuple_fixes_the_dimension_for_the_int_sizes():
    assert maxpool_lipschitz((3, 3), 2) == maxpool_lipschitz(3, (2, 2)) == 2
    assert max_window_overlap(3, 1, (1, 1, 1)) == 27
    assert avgpool_lipschitz(2, (2, 2)) == Rational(1, 2)


def test_lists_are_read_like_tuples():
    # graph files store sizes as JSON lists
    assert maxpool_lipschitz([3, 3], [2, 2], [1, 1]) == maxpool_lipschitz((3, 3), (2, 2)) == 2
    assert max_window_overlap([3], [1]) == 3
    assert avgpool_lipschitz([2, 2], [2, 2]) == Rational(1, 2)


def test_the_dimension_changes_the_constant_in_both_directions():
    # why an int alone is refused: a 1-D reading of MaxPool2d(3, 2) under-estimates it,
    # a 2-D reading of AvgPool1d(2) under-estimates that
    assert maxpool_lipschitz(3, 2, ndim=1) < maxpool_lipschitz(3, 2, ndim=2)
    assert avgpool_lipschitz(2, ndim=2) < avgpool_lipschitz(2, ndim=1)


_ONLY_INTS = r"expected tuples with one entry per spatial dimension or ndim=, got only integers"


def test_max_window_overlap_refuses_ints_without_ndim():
    with pytest.raises(ParameterError, match=rf"max_window_overlap: {_ONLY_INTS} "
                                             r"\{'kernel_size': 3, 'stride': 2, 'dilation': 1\}"):
        max_window_overlap(3, 2)


def test_maxpool_lipschitz_refuses_ints_without_ndim():
    with pytest.raises(ParameterError, match=rf"maxpool_lipschitz: {_ONLY_INTS}"):
        maxpool_lipschitz(3, 2)
    with pytest.raises(ParameterError, match=rf"maxpool_lipschitz: {_ONLY_INTS}"):
        maxpool_lipschitz(2)  # stride defaults to the kernel: still only ints


def test_avgpool_lipschitz_refuses_ints_without_ndim():
    with pytest.raises(ParameterError, match=rf"avgpool_lipschitz: {_ONLY_INTS} "
                                             r"\{'kernel_size': 2, 'stride': 2\}"):
        avgpool_lipschitz(2)


def test_global_average_pooling():
    assert global_avgpool_lipschitz(49) == Rational(1, 7)
    assert np.linalg.norm(np.full((1, 10), 0.1), 2) == pytest.approx(
        float(global_avgpool_lipschitz(10)), rel=1e-15)
    H, W = sympy.symbols("H W", positive=True)
    assert sympy.simplify(global_avgpool_lipschitz(H * W) ** 2 - 1 / (H * W)) == 0


@pytest.mark.parametrize(("call", "match"), [
    (lambda: maxpool_lipschitz(0, ndim=1), r"maxpool_lipschitz: expected kernel_size to be an "
                                           r"integer >= 1, got 0"),
    (lambda: maxpool_lipschitz((True,)), "expected kernel_size to be an integer >= 1, got True"),
    (lambda: avgpool_lipschitz((2, 2), (1, 1, 1)), "expected sizes with one entry per "
                                                   "spatial dimension"),
    (lambda: maxpool_lipschitz((2, 2), ndim=3), r"expected 3 entries per size \(ndim=3\)"),
    (lambda: avgpool_lipschitz(2, ndim=0), "expected ndim to be an integer >= 1, got 0"),
    (lambda: maxpool_lipschitz((2, 2), 1.5), "expected stride to be an integer >= 1, got 1.5"),
    (lambda: max_window_overlap(2, dilation=-1, ndim=2), "expected dilation to be an integer "
                                                         ">= 1, got -1"),
    (lambda: global_avgpool_lipschitz(0), "global_avgpool_lipschitz: expected n > 0, "
                                          "got 0"),
    (lambda: global_avgpool_lipschitz(2.5), "expected n to be an integer >= 1, got 2.5"),
    (lambda: global_avgpool_lipschitz(-Symbol("n", positive=True)),
     "expected n > 0, got -n"),
], ids=["zero-kernel", "bool-kernel", "length-mismatch", "ndim-mismatch", "bad-ndim",
        "float-stride", "negative-dilation", "global-zero", "global-float", "global-negative"])
def test_invalid_geometry_raises(call, match):
    with pytest.raises(ParameterError, match=match):
        call()


def _adaptive_matrix(size_in, size_out, dims):
    """The dense matrix of torch's AdaptiveAvgPool{1,2}d on a size_in grid (float64)."""
    import torch
    pool = {1: torch.nn.functional.adaptive_avg_pool1d,
            2: torch.nn.functional.adaptive_avg_pool2d}[dims]
    n = size_in**dims
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *([size_in] * dims))
    return pool(basis, [size_out] * dims).reshape(n, -1).T.numpy()


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize(("size_in", "size_out"), [(1, 7), (2, 7), (3, 7), (7, 7), (10, 7),
                                                   (14, 7), (5, 3), (1, 1), (9, 1), (4, 6)])
def test_adaptive_avgpool_is_the_exact_norm_of_torch_operator(size_in, size_out, dims):
    exact = np.linalg.norm(_adaptive_matrix(size_in, size_out, dims), 2)
    bound = adaptive_avgpool_lipschitz((size_out,) * dims, (size_in,) * dims)
    assert exact <= float(bound) * (1 + 1e-12)
    assert float(bound) <= exact * (1 + 1e-12)
    worst = adaptive_avgpool_lipschitz((size_out,) * dims)
    assert worst == sympy.sqrt(size_out**dims) and exact <= float(worst) * (1 + 1e-12)


def test_adaptive_avgpool_closed_values():
    assert adaptive_avgpool_lipschitz((7, 7)) == 7
    assert adaptive_avgpool_lipschitz((7, 7), (1, 1)) == 7
    assert adaptive_avgpool_lipschitz((7, 7), (7, 7)) == 1
    assert adaptive_avgpool_lipschitz((7, 7), (28, 28)) == Rational(1, 4)
    assert adaptive_avgpool_lipschitz(7, ndim=2) == 7


@pytest.mark.parametrize(("call", "match"), [
    (lambda: adaptive_avgpool_lipschitz(7), "adaptive_avgpool_lipschitz: expected tuples"),
    (lambda: adaptive_avgpool_lipschitz((7, 7), (0, 3)), "expected input_size to be an "
                                                         "integer >= 1, got 0"),
    (lambda: adaptive_avgpool_lipschitz((7, 7), (3, 3, 3)), "one entry per spatial"),
], ids=["no-ndim", "zero-input", "length-mismatch"])
def test_adaptive_avgpool_refusals(call, match):
    with pytest.raises(ParameterError, match=match):
        call()
