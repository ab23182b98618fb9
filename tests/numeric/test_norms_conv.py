"""Certified convolution norms against exact float64 references, over random geometries.

References are independent of the code under test: the exact norm of a layer is the
largest singular value of its Jacobian built by ``torch.func.jacrev`` through
``torch.nn.functional`` (padding modes through ``F.pad``); the circulant and torus maxima
of a symbol come from ``torch.fft`` and ``torch.linalg.svdvals``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from numeric.errors import ConvergenceError, InputError
from numeric.graph.norms import (CERTIFICATION_FACTOR, conv_dense_matrix,
                                 conv_operator_norm_bound)
from numeric.graph.norms import spectral

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
METHODS = ("auto", "grid", "torus")


def exact_norm(weight, size, stride, padding, dilation, groups, mode="zeros") -> float:
    """||conv||_2 from the dense Jacobian of the layer on its grid (float64 SVD)."""
    dims = weight.dim() - 2

    def layer(x):
        x = x.unsqueeze(0)
        if mode != "zeros":
            x = F.pad(x, [p for p in reversed(padding) for _ in range(2)], mode=mode)
            return CONV[dims](x, weight, stride=stride, dilation=dilation,
                              groups=groups).reshape(-1)
        return CONV[dims](x, weight, stride=stride, padding=padding, dilation=dilation,
                          groups=groups).reshape(-1)

    x = torch.zeros(weight.shape[1] * groups, *size, dtype=torch.float64)
    jacobian = torch.func.jacrev(layer)(x).reshape(-1, x.numel())
    return float(torch.linalg.matrix_norm(jacobian, ord=2))


@st.composite
def layers(draw, max_columns: int = 320):
    """A random layer small enough for a dense reference: geometry, weights and scale."""
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4 if dims == 1 else 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(dims))
    mode = draw(st.sampled_from(["zeros", "zeros", "zeros", "reflect", "replicate",
                                 "circular"]))
    longest = {1: 24, 2: 9, 3: 5}[dims]
    smallest = [max(1, d * (k - 1) + 1 - 2 * p, p + 1 if mode == "reflect" else 1,
                    p if mode == "circular" else 1)
                for k, d, p in zip(kernel, dilation, padding)]
    size = [draw(st.integers(low, max(low, longest))) for low in smallest]
    if c_in * math.prod(size) > max_columns:
        size = smallest
        if c_in * math.prod(size) > max_columns:
            c_in, c_out, groups = 1, 1, 1
    exponent = draw(st.sampled_from([0, 0, 0, -3, 5, -300, 300]))
    seed = draw(st.integers(0, 2 ** 16))
    weight = torch.randn(c_out, c_in // groups, *kernel, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed)) * 10.0 ** exponent
    return weight, tuple(size), stride, padding, dilation, groups, mode


def _holds(geometry, methods=METHODS + ("dense",)) -> dict[str, float]:
    weight, size, stride, padding, dilation, groups, mode = geometry
    exact = exact_norm(weight, size, stride, padding, dilation, groups, mode)
    ratios = {}
    for method in methods:
        bound = conv_operator_norm_bound(weight, size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups,
                                         padding_mode=mode, method=method)
        assert bound >= exact, (method, bound, exact, geometry[1:])
        ratios[method] = bound / exact if exact > 0 else 1.0
    return ratios


@settings(max_examples=40)
@given(layers())
def test_bound_is_never_below_the_exact_norm(geometry):
    ratios = _holds(geometry)
    assert ratios["dense"] <= 1 + 1e-6          # dense is exact up to rounding
    assert ratios["grid"] <= ratios["torus"] * (1 + 1e-9) or geometry[-1] != "zeros"


@pytest.mark.slow
@settings(max_examples=400)
@given(layers(max_columns=900))
def test_bound_is_never_below_the_exact_norm_heavy(geometry):
    _holds(geometry)


def test_tightness_distribution_on_small_grids():
    """Bound / exact over 30 seeded 2-d geometries: never below 1; the distribution is the
    circulant-vs-zero-padding gap of tiny grids (it shrinks as the grid grows)."""
    generator = torch.Generator().manual_seed(0)
    ratios = {method: [] for method in METHODS}
    for case in range(30):
        draw = torch.randint(0, 1000, (6,), generator=generator).tolist()
        k, s, d, p = [1, 2, 3, 3][draw[0] % 4], [1, 1, 2][draw[1] % 3], \
            [1, 1, 2][draw[2] % 3], draw[3] % 3
        n = max(d * (k - 1) + 1 - 2 * p, 4 + draw[4] % 8)
        weight = torch.randn(4, 4, k, k, dtype=torch.float64, generator=generator)
        for method, value in _holds((weight, (n, n), (s, s), (p, p), (d, d), 1, "zeros"),
                                    METHODS).items():
            ratios[method].append(value)
    levels = torch.tensor([0.0, 0.5, 0.9, 1.0], dtype=torch.float64)
    summary = {method: torch.tensor(values, dtype=torch.float64).quantile(levels).tolist()
               for method, values in ratios.items()}
    print("bound/exact quantiles (min, median, p90, max):", summary)
    assert summary["auto"][1] <= 1.25 and summary["auto"][3] <= 2.5


def _circulant_norm(weight, size) -> float:
    """Exact norm of the circular convolution on ``size``: max SVD over all DFT bins."""
    symbol = torch.fft.fftn(weight, s=size, dim=tuple(range(2, weight.dim())))
    matrices = symbol.movedim(0, -1).movedim(0, -1).reshape(-1, *weight.shape[:2])
    return float(torch.linalg.svdvals(matrices)[:, 0].max())


@pytest.mark.parametrize("channels,taps,size", [((8, 8), (3, 3), (10, 10)),
                                                ((64, 48), (3, 3), (6, 7)),
                                                ((6, 6), (5,), (40,)),
                                                ((3, 5), (2, 3, 2), (5, 4, 6))])
def test_grid_is_within_its_margin_of_the_exact_circulant_norm(channels, taps, size):
    weight = torch.randn(*channels, *taps, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(sum(size)))
    padded = tuple(n + 2 for n in size)
    exact = _circulant_norm(weight, padded)
    bound = conv_operator_norm_bound(weight, size, padding=1, method="grid")
    assert exact <= bound <= exact * math.sqrt(1 + spectral.ESTIMATE_SLACK) * (1 + 1e-7)


def _fine_supremum(weight, resolution=256) -> float:
    """max of ||K^(w)|| over a fine DFT grid: a lower bound on the torus supremum."""
    return _circulant_norm(weight, (resolution,) * (weight.dim() - 2))


@settings(max_examples=15)
@given(st.integers(0, 2 ** 16), st.sampled_from([(1, 1), (2, 3), (4, 4)]),
       st.sampled_from([(3, 3), (2, 2), (1, 3), (5, 4)]),
       st.sampled_from([0.005, 0.02, 0.2]))
def test_torus_bound_covers_the_supremum_within_rtol(seed, channels, taps, rtol):
    """Bernstein's argument at its worst: single-channel kernels are pure trigonometric
    polynomials whose peak falls anywhere between lattice points."""
    weight = torch.randn(*channels, *taps, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed))
    bound = conv_operator_norm_bound(weight, (64, 64), method="torus", rtol=rtol)
    supremum = _fine_supremum(weight)
    assert bound >= supremum
    slack = (1 + rtol) * math.sqrt(1 + spectral.ESTIMATE_SLACK) * (1 + 1e-7)
    assert bound <= supremum * slack * (1 + 1e-3)   # the fine grid misses <= 0.1 %


def test_torus_bound_holds_at_every_input_size():
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(7))
    bound = conv_operator_norm_bound(weight, (50, 50), padding=1, method="torus")
    for n in (2, 5, 11):
        assert bound >= exact_norm(weight, (n, n), (1, 1), (1, 1), (1, 1), 1)


@pytest.mark.parametrize("exponent", [-1000, -500, 0, 200, 500, 1000])
def test_extreme_scales_are_exact_powers_of_two(exponent):
    """Kernels scaled by 2**e give the same certified value times 2**e (the scaling is
    exact), near the ends of the float64 range included."""
    base = torch.randn(4, 3, 3, 3, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    reference = conv_operator_norm_bound(base, (9, 9), padding=1, method="grid")
    scaled = torch.ldexp(base, torch.tensor(exponent))
    value = conv_operator_norm_bound(scaled, (9, 9), padding=1, method="grid")
    assert value >= math.ldexp(reference / CERTIFICATION_FACTOR, exponent) * (1 - 1e-12)
    assert value == pytest.approx(math.ldexp(reference, exponent), rel=1e-9)


def test_mixed_huge_and_tiny_entries_stay_above_the_norm():
    weight = torch.randn(3, 3, 3, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(2)) * 1e300
    weight[0, 0] = 1e-300
    exact = exact_norm(weight, (6, 6), (1, 1), (1, 1), (1, 1), 1)
    assert conv_operator_norm_bound(weight, (6, 6), padding=1, method="grid") >= exact


def test_failed_tests_raise_the_threshold_and_stay_certified(monkeypatch):
    """Estimates far below the truth only cost rounds: the bound still certifies."""
    weight = torch.randn(64, 64, 3, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3))
    exact = exact_norm(weight, (5, 5), (1, 1), (1, 1), (1, 1), 1)
    honest = conv_operator_norm_bound(weight, (5, 5), padding=1, method="grid")
    monkeypatch.setattr(spectral, "_estimates", lambda negated, generator:
                        torch.full((negated.shape[0],), 1e-3, dtype=torch.float64))
    fooled = conv_operator_norm_bound(weight, (5, 5), padding=1, method="grid")
    assert fooled >= exact and honest >= exact


def test_a_test_that_never_passes_is_an_error(monkeypatch):
    monkeypatch.setattr(spectral._Workspace, "passes",
                        lambda self, shifted: torch.zeros(shifted.shape[0], dtype=torch.bool))
    with pytest.raises(ConvergenceError, match="Cholesky"):
        conv_operator_norm_bound(torch.randn(2, 2, 3, 3), (6, 6), method="grid")


def test_auto_picks_the_grid_unless_it_costs_much_more_than_the_torus():
    from numeric.graph.norms.conv import choose_method
    from numeric.graph.norms.geometry import ConvGeometry, reduce_kernel
    geometry = ConvGeometry((1, 1), (1, 1), (1, 1))
    small, wide = torch.randn(8, 8, 3, 3), torch.randn(256, 256, 3, 3)
    assert choose_method(reduce_kernel(wide, (7, 7), geometry), 0.02) == "grid"
    assert choose_method(reduce_kernel(small, (224, 224), geometry), 0.02) == "grid"
    assert choose_method(reduce_kernel(wide, (224, 224), geometry), 0.02) == "torus"


def test_dense_matrix_is_the_layer():
    weight = torch.randn(4, 2, 3, 2, dtype=torch.float64)
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    matrix = conv_dense_matrix(weight, (7, 6), stride=(2, 1), padding=1, dilation=(1, 2),
                               groups=2)
    expected = F.conv2d(x.unsqueeze(0), weight, stride=(2, 1), padding=1, dilation=(1, 2),
                        groups=2)
    torch.testing.assert_close(matrix @ x.reshape(-1), expected.reshape(-1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight=torch.full((2, 2, 3, 3), math.nan)), "finite real weights"),
    (dict(weight=torch.ones(2, 2, 3, 3, dtype=torch.complex64)), "finite real weights"),
    (dict(weight=torch.ones(2, 2, 3, 3), method="gram"), "expected method"),
    (dict(weight=torch.ones(2, 2, 3, 3), rtol=0.0), "expected rtol"),
    (dict(weight=torch.ones(2, 2, 3, 3), padding_mode="mirror"), "padding_mode"),
    (dict(weight=torch.ones(2, 2, 3, 3), input_shape=(0, 4)), "positive 2-d input"),
    (dict(weight=torch.ones(2, 2, 3, 3), stride=(1, 1, 1)), "stride with 2 entries"),
])
def test_errors_name_the_culprit(kwargs, match):
    kwargs = {"input_shape": (5, 5), **kwargs}
    weight = kwargs.pop("weight")
    shape = kwargs.pop("input_shape")
    with pytest.raises(InputError, match=match):
        conv_operator_norm_bound(weight, shape, **kwargs)
