"""fisher_top_eigenvalue: Lanczos, power, exact and auto against dense float64 spectra."""

import pytest
import torch
from torch import nn

from numeric.errors import ConvergenceError
from numeric.fisher import fisher_top_eigenvalue
from numeric.fisher.iterative import block_size, choose_method
from numeric.fisher.krylov import block_lanczos, power_iteration
from tests.numeric.fisher_models import MODELS, build
from tests.reference import exact_fisher_spectrum

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _relative(got, expected):
    return float(((got - expected) / expected).abs().max())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["exact", "lanczos", "auto"])
def test_top_eigenvalue_within_1e6(name, method):
    model, x = build(name)
    reference = exact_fisher_spectrum(model, x).detach()[:, 0]
    got = fisher_top_eigenvalue(model, x, method, generator=torch.Generator().manual_seed(0))
    assert got.shape == (x.shape[0],)
    assert _relative(got, reference) <= 1e-6


@pytest.mark.parametrize("name", ["mlp", "dense-concat", "vit-mha"])
def test_lanczos_top_k(name):
    model, x = build(name)
    reference = exact_fisher_spectrum(model, x).detach()[:, :3]
    got = fisher_top_eigenvalue(model, x, "lanczos", k=3,
                                generator=torch.Generator().manual_seed(0))
    assert got.shape == (x.shape[0], 3)
    assert _relative(got, reference) <= 1e-6


@pytest.mark.parametrize("name", ["mlp", "cnn-batchnorm", "vit-mha"])
def test_power_within_its_tolerance(name):
    model, x = build(name)
    reference = exact_fisher_spectrum(model, x).detach()[:, 0]
    tol = 1e-5
    got, diagnostics = fisher_top_eigenvalue(
        model, x, "power", tol=tol, max_iter=5000, generator=torch.Generator().manual_seed(0),
        return_diagnostics=True)
    assert bool(diagnostics.converged.all())
    assert bool((diagnostics.residuals <= tol).all())
    assert _relative(got, reference) <= tol
    assert bool((got <= reference * (1 + 1e-12)).all())  # Rayleigh quotients from below


def test_diagnostics_record_iterations_and_residuals():
    model, x = build("dense-concat")
    values, d = fisher_top_eigenvalue(model, x, "lanczos", return_diagnostics=True,
                                      generator=torch.Generator().manual_seed(0))
    assert d.method == "lanczos" and d.converged.all() and d.products >= 1
    assert d.iterations.shape == (3,) and d.residuals.shape == (3, 1)
    assert d.residual_history.shape == (d.products, 3)
    _, exact = fisher_top_eigenvalue(model, x, "auto", return_diagnostics=True)
    assert exact.method == "exact" and exact.iterations.eq(0).all()


def test_non_convergence_raises_and_names_rows():
    model, x = build("dense-concat")
    with pytest.raises(ConvergenceError, match=r"power did not reach tol=1e-12 within "
                                               r"max_iter=2 for rows \[0, 1, 2\]") as info:
        fisher_top_eigenvalue(model, x, "power", tol=1e-12, max_iter=2,
                              generator=torch.Generator().manual_seed(0))
    assert info.value.iterations == 2 and info.value.residual > 1e-12


def test_non_convergence_reported_per_row_with_diagnostics():
    model, x = build("dense-concat")
    values, d = fisher_top_eigenvalue(model, x, "lanczos", tol=1e-12, max_iter=2,
                                      return_diagnostics=True,
                                      generator=torch.Generator().manual_seed(0))
    assert not bool(d.converged.any())
    assert bool((d.residuals > 1e-12).all()) and bool(d.iterations.eq(2).all())


def test_seeded_generator_reproduces():
    model, x = build("mlp")
    run = lambda: fisher_top_eigenvalue(model, x, "power", tol=1e-3,  # noqa: E731
                                        generator=torch.Generator().manual_seed(5))
    assert torch.equal(run(), run())


def test_auto_rule():
    assert choose_method(10, 3 * 32 * 32) == "exact"
    assert choose_method(32, 10) == "exact"
    assert choose_method(33, 10) == "lanczos"
    assert choose_method(1000, 3 * 224 * 224) == "lanczos"
    assert choose_method(10, 2 ** 26) == "lanczos"


def _diagonal_operator(diagonal):
    """A row operator (module docstring of numeric.fisher.krylov) for diagonal matrices."""
    return lambda u, rows: diagonal[rows].unsqueeze(1) * u


EPS64 = torch.finfo(torch.float64).eps


def test_lanczos_restarts_when_the_krylov_space_is_smaller_than_k():
    # eigenvalues 5, 5, 1 on the complement of e_0; a start vector sees one copy of 5,
    # so the Krylov space {5, 1} is invariant after 2 steps and Lanczos restarts
    diagonal = torch.tensor([[0.0, 5.0, 5.0, 1.0]], dtype=torch.float64)
    null = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)
    start = torch.ones(1, 1, 4, dtype=torch.float64)
    result = block_lanczos(_diagonal_operator(diagonal), start, null, k=3, max_iter=10,
                           tol=1e-10, eps=EPS64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.values,
                               torch.tensor([[5.0, 5.0, 1.0]], dtype=torch.float64))
    assert bool(result.converged.all()) and result.products == 3


def test_a_block_of_two_sees_a_double_eigenvalue_that_one_vector_misses():
    # eigenvalues 5, 5 and seven distinct smaller ones: one start vector sees one copy of 5,
    # so its Krylov space is invariant at dimension 8 with Ritz values 5, 1, ...; a block
    # of two sees both copies
    diagonal = torch.tensor([[0.0, 5, 5, 1, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01]],
                            dtype=torch.float64)
    null = torch.zeros(1, 10, dtype=torch.float64)
    null[0, 0] = 1
    start = torch.randn(1, 2, 10, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    run = lambda block: block_lanczos(  # noqa: E731
        _diagonal_operator(diagonal), start[:, :block], null, k=2, max_iter=8, tol=1e-5,
        eps=EPS64)
    single, double = run(1), run(2)
    torch.testing.assert_close(single.values, torch.tensor([[5.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(double.values, torch.tensor([[5.0, 5.0]], dtype=torch.float64))
    assert bool(double.converged.all()) and double.products < single.products


def test_rows_stop_independently_and_are_no_longer_asked_for():
    # row 0 starts on its top eigenvector and stops after one product; row 1 needs four
    diagonal = torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0],
                             [0.0, 4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    null = torch.zeros(2, 5, dtype=torch.float64)
    null[:, 0] = 1
    asked = []
    operator = _diagonal_operator(diagonal)

    def counting(u, rows):
        asked.append(rows.tolist())
        return operator(u, rows)

    start = torch.ones(2, 1, 5, dtype=torch.float64)
    start[0, 0] = torch.tensor([0.0, 1, 0, 0, 0])
    result = block_lanczos(counting, start, null, k=1, max_iter=4, tol=1e-12, eps=EPS64)
    torch.testing.assert_close(result.values[:, 0],
                               torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert asked[0] == [0, 1] and all(rows == [1] for rows in asked[1:])
    assert result.iterations.tolist() == [1, 4] and result.history.shape == (4, 2)


def test_block_size_rule():
    cpu = torch.device("cpu")
    assert block_size(2, 1000, cpu) == 1 and block_size(8, 1000, cpu) == 1
    assert block_size(1, 1000, cpu) == 2 and block_size(1, 2, cpu) == 1
    assert block_size(1, 1000, torch.device("cuda", 0)) == 8
    assert block_size(16, 1000, torch.device("cuda", 0)) == 4


def test_power_iteration_on_known_spectrum():
    diagonal = torch.tensor([[0.0, 4.0, 1.0, 0.5]], dtype=torch.float64)
    null = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)
    result = power_iteration(_diagonal_operator(diagonal), torch.ones(1, 4, dtype=torch.float64),
                             null, max_iter=200, tol=1e-10)
    assert bool(result.converged.all())
    torch.testing.assert_close(result.values[:, 0], torch.tensor([4.0], dtype=torch.float64))


def test_constant_model_has_zero_fisher():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 3)

    x = torch.randn(2, 4, dtype=torch.float64)
    for method in ("exact", "lanczos", "power"):
        assert torch.equal(fisher_top_eigenvalue(Constant(), x, method),
                           torch.zeros(2, dtype=torch.float64))
