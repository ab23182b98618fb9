"""Certified operator norms against the exact norm of the explicit dense operator."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import theory
from numeric.errors import InputError
from numeric.graph import (CERTIFICATION_FACTOR, conv_operator_norm_bound,
                           conv_operator_norm_estimate, linear_operator_norm)
from numeric.graph.norms import avgpool_operator_norm, pooling_coverage

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def dense_conv_norm(weight, size, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros"):
    """||conv||_2 from the dense Jacobian (torch.func.jacrev) of the layer on its grid."""
    dims = weight.dim() - 2
    channels = weight.shape[1] * groups

    def layer(x):
        if padding_mode != "zeros":
            pad = [p for p in reversed(_tuple(padding, dims)) for _ in range(2)]
            x = F.pad(x.unsqueeze(0), pad, mode=padding_mode)[0]
            return CONV[dims](x.unsqueeze(0), weight, stride=stride, dilation=dilation,
                              groups=groups).reshape(-1)
        return CONV[dims](x.unsqueeze(0), weight, stride=stride, padding=padding,
                          dilation=dilation, groups=groups).reshape(-1)

    x = torch.zeros(channels, *size, dtype=torch.float64)
    jacobian = torch.func.jacrev(layer)(x).reshape(-1, x.numel())
    return float(torch.linalg.matrix_norm(jacobian, ord=2))


def _tuple(value, dims):
    return (value,) * dims if isinstance(value, int) else tuple(value)


GEOMETRIES = [(s, p, d, g, k) for s, p, d, g, k in itertools.product(
    (1, 2, 3), (0, 1, 2), (1, 2), (1, 2), (1, 2, 3)) if 7 + 2 * p - d * (k - 1) >= 1]
RATIOS: dict[str, list[float]] = {"grid": [], "torus": []}


@pytest.mark.parametrize("stride,padding,dilation,groups,kernel", GEOMETRIES,
                         ids=[f"s{s}p{p}d{d}g{g}k{k}" for s, p, d, g, k in GEOMETRIES])
def test_conv2d_bound_is_above_exact_norm(stride, padding, dilation, groups, kernel):
    generator = torch.Generator().manual_seed(stride + 10 * padding + 100 * dilation
                                              + 1000 * groups + 10000 * kernel)
    weight = torch.randn(4, 4 // groups, kernel, kernel, dtype=torch.float64,
                         generator=generator)
    size = (7, 6)
    exact = dense_conv_norm(weight, size, stride, padding, dilation, groups)
    for method in ("auto", "dense", "grid", "torus"):
        bound = conv_operator_norm_bound(weight, size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, method=method)
        assert bound >= exact, method
        if method == "dense":
            assert bound == pytest.approx(exact, rel=1e-7)
        if method in RATIOS:
            RATIOS[method].append(bound / exact)
    # the grid is a subset of the torus, whose supremum the torus bound exceeds
    assert RATIOS["grid"][-1] <= RATIOS["torus"][-1] * (1 + 1e-12)
    # and the circular embedding stays within a small factor on these sizes
    assert RATIOS["grid"][-1] <= 2.5


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("method", ["auto", "grid", "torus"])
def test_conv_padding_modes(mode, method):
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    exact = dense_conv_norm(weight, (5, 6), padding=1, padding_mode=mode)
    bound = conv_operator_norm_bound(weight, (5, 6), padding=1, padding_mode=mode,
                                     method=method)
    assert bound >= exact


@pytest.mark.parametrize("dims,size", [(1, (9,)), (3, (4, 3, 5))])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2),
                                                     (3, 1, 2)])
def test_conv1d_and_conv3d(dims, size, stride, padding, dilation):
    weight = torch.randn(3, 2, *([2] * dims), dtype=torch.float64,
                         generator=torch.Generator().manual_seed(dims))
    exact = dense_conv_norm(weight, size, stride, padding, dilation)
    for method in ("auto", "grid", "torus", "dense"):
        bound = conv_operator_norm_bound(weight, size, stride=stride, padding=padding,
                                         dilation=dilation, method=method)
        assert bound >= exact


def test_conv_module_supplies_its_geometry():
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2).double()
    exact = dense_conv_norm(conv.weight.detach(), (8, 8), 2, 1, 1, 2)
    assert conv_operator_norm_bound(conv, (8, 8)) >= exact


def test_one_by_one_conv_is_its_matrix_norm():
    weight = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    matrix = weight.reshape(5, 3)
    assert conv_operator_norm_bound(weight, (6, 6)) == pytest.approx(
        float(torch.linalg.matrix_norm(matrix, 2)), rel=1e-7)


def test_patch_embedding_is_exact():
    """Non-overlapping windows (kernel = stride): the polyphase form is one matrix."""
    weight = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    exact = dense_conv_norm(weight, (8, 8), stride=4)
    for method in ("grid", "torus"):
        assert conv_operator_norm_bound(weight, (8, 8), stride=4, method=method) == \
            pytest.approx(exact, rel=1e-7)


def test_torus_bound_holds_for_larger_grids():
    """The torus bound of a kernel bounds the same layer on every grid size."""
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(5))
    bound = conv_operator_norm_bound(weight, (16, 16), padding=1, method="torus")
    for size in (4, 9, 16):
        assert bound >= dense_conv_norm(weight, (size, size), padding=1)


def test_power_iteration_estimate_is_below_the_bound_and_close_to_exact():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3))
    exact = dense_conv_norm(weight, (6, 6), stride=1, padding=1)
    estimate = conv_operator_norm_estimate(weight, (3, 6, 6), padding=1, max_iter=2000,
                                           generator=torch.Generator().manual_seed(0))
    assert estimate <= exact * (1 + 1e-12)
    assert estimate == pytest.approx(exact, rel=1e-4)
    assert conv_operator_norm_bound(weight, (6, 6), padding=1) >= estimate


def test_linear_operator_norm_matches_svd():
    weight = torch.randn(7, 4, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(weight, 2))
    value = linear_operator_norm(weight)
    assert exact <= value <= exact * CERTIFICATION_FACTOR * (1 + 1e-14)
    assert linear_operator_norm(torch.nn.Linear(4, 7)) > 0


@pytest.mark.parametrize("bad,match", [
    (dict(weight=torch.zeros(3)), "expected a matrix"),
])
def test_linear_operator_norm_errors(bad, match):
    with pytest.raises(InputError, match=match):
        linear_operator_norm(**bad)


def test_conv_bound_errors():
    weight = torch.randn(4, 2, 3, 3)
    with pytest.raises(InputError, match="method"):
        conv_operator_norm_bound(weight, (5, 5), method="magic")
    with pytest.raises(InputError, match="divisible by groups"):
        conv_operator_norm_bound(torch.randn(3, 1, 3, 3), (5, 5), groups=2)


@pytest.mark.parametrize("kernel,stride,dilation", [(2, 2, 1), (3, 1, 1), (3, 2, 1),
                                                    (3, 2, 2), (4, 3, 2)])
def test_pooling_coverage_never_exceeds_theory(kernel, stride, dilation):
    theory_count = theory.max_window_overlap(kernel, stride, dilation, ndim=1)
    for n in range(kernel * dilation, 20):
        out = (n - dilation * (kernel - 1) - 1) // stride + 1
        assert pooling_coverage(n, out, kernel, stride, 0, dilation) <= theory_count
    assert pooling_coverage(40, (40 - dilation * (kernel - 1) - 1) // stride + 1, kernel,
                            stride, 0, dilation) == theory_count


@pytest.mark.parametrize("kernel,stride,padding,ceil,include", [
    (2, 2, 0, False, True), (3, 1, 1, False, True), (3, 2, 1, True, False),
    (3, 2, 1, True, True), (2, 1, 1, False, False)])
def test_avgpool_norm_is_exact(kernel, stride, padding, ceil, include):
    size = (5, 6)

    def pool(x):
        return F.avg_pool2d(x, kernel, stride, padding, ceil, include)

    def one_dim(signal, dim):
        return F.avg_pool1d(signal, kernel, stride, padding, ceil, include)

    x = torch.zeros(1, 1, *size, dtype=torch.float64)
    jacobian = torch.func.jacrev(lambda z: pool(z).reshape(-1))(x).reshape(-1, x.numel())
    exact = float(torch.linalg.matrix_norm(jacobian, 2))
    value = avgpool_operator_norm(one_dim, size)
    assert exact <= value <= exact * (1 + 1e-7)
    if include and not ceil:
        assert value <= float(theory.avgpool_lipschitz((kernel, kernel), (stride, stride))
                              ) * (1 + 1e-7)


def test_certification_factor_documented_size():
    assert 1 < CERTIFICATION_FACTOR <= 1 + 1e-7
    assert math.isclose(CERTIFICATION_FACTOR, 1 + 1e-8)
