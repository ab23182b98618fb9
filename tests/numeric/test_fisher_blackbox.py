"""blackbox_fisher_top_eigenvalue: exactness, stated error, query accounting, bad input."""

import math

import pytest
import torch

from numeric.errors import InputError
from numeric.fisher import blackbox_fisher_top_eigenvalue, fisher_eigenvalues
from tests.numeric.fisher_models import MLP, build

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _proba(model):
    def predict_proba(z):
        with torch.no_grad():
            return torch.softmax(model(z), dim=-1)
    return predict_proba


class _Counter:
    """Wraps predict_proba and counts evaluated rows per call."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, z):
        self.calls.append(z.shape[0])
        return self.function(z)


def _exact(model, x):
    return fisher_eigenvalues(model, x)[:, 0]


@pytest.mark.parametrize("name,dim", [("mlp", 12), ("vit-mha", 12), ("cnn-batchnorm", 32)])
def test_sketch_is_exact_when_the_directions_span_the_input(name, dim):
    model, x = build(name)
    result = blackbox_fisher_top_eigenvalue(_proba(model), x, queries=dim + 1,
                                            generator=torch.Generator().manual_seed(0))
    assert result.num_directions == dim and result.standard_error.eq(0).all()
    assert result.bias.eq(0).all()
    torch.testing.assert_close(result.values, _exact(model, x), rtol=1e-5, atol=0)
    torch.testing.assert_close(result.eigenvalues, fisher_eigenvalues(model, x),
                               rtol=1e-4, atol=1e-9 * float(result.values.max()))


@pytest.mark.parametrize("name,queries", [("mlp", 200), ("cnn-batchnorm", 17),
                                          ("dense-concat", 9)])
def test_sketch_within_its_stated_error(name, queries):
    model, x = build(name, batch=4)
    exact = _exact(model, x)
    result = blackbox_fisher_top_eigenvalue(_proba(model), x, queries=queries,
                                            generator=torch.Generator().manual_seed(1))
    relative_se = result.standard_error / result.values
    assert bool(((result.values - exact).abs() <= 5 * relative_se * exact + 1e-6 * exact)
                .all())


def test_sketch_on_large_inputs_and_the_paper_recipe_biased_low():
    torch.manual_seed(0)
    model = MLP(d=768, hidden=32).double().eval()
    x = torch.randn(4, 768, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = _exact(model, x)
    sketch = blackbox_fisher_top_eigenvalue(_proba(model), x, 200,
                                            generator=torch.Generator().manual_seed(2))
    assert sketch.num_directions == 199
    assert bool(((sketch.values - exact).abs() <= 5 * sketch.standard_error).all())
    plain = blackbox_fisher_top_eigenvalue(_proba(model), x, 200, debias=False,
                                           generator=torch.Generator().manual_seed(2))
    assert math.isclose(float(plain.standard_error[0] / plain.values[0]),
                        math.sqrt(2 * 199 * (768 - 199) / (199 ** 2 * 770)))
    torch.testing.assert_close(sketch.eigenvalues, plain.eigenvalues, rtol=0, atol=0)
    paper = blackbox_fisher_top_eigenvalue(_proba(model), x, 200, method="max_rayleigh",
                                           generator=torch.Generator().manual_seed(2))
    assert paper.num_directions == 99 and paper.step == 1e-3
    assert paper.standard_error is None and paper.bias is None
    assert bool((paper.values <= exact * (1 + 1e-4)).all())   # Rayleigh quotients
    assert bool((paper.values <= 0.3 * exact).all())          # biased low when d >> K


def _crowded_linear_model(classes=100, dim=300):
    """A linear classifier with a nearly uniform softmax: many eigenvalues of F close to
    the top (a Marchenko-Pastur bulk), the case where the plain sketch is biased most."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(dim, classes, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(0.01 * torch.randn(classes, dim, generator=generator,
                                              dtype=torch.float64))
    return model, torch.randn(32, dim, generator=generator, dtype=torch.float64)


def test_bootstrap_removes_the_bias_of_a_crowded_spectrum():
    model, x = _crowded_linear_model()
    spectrum = fisher_eigenvalues(model, x)
    assert float((spectrum[:, 5] / spectrum[:, 0]).min()) > 0.7          # crowded top
    exact = spectrum[:, 0]
    plain = blackbox_fisher_top_eigenvalue(_proba(model), x, 100, debias=False,
                                           generator=torch.Generator().manual_seed(1))
    corrected = blackbox_fisher_top_eigenvalue(_proba(model), x, 100,
                                               generator=torch.Generator().manual_seed(1))
    plain_error, error = (plain.values - exact) / exact, (corrected.values - exact) / exact
    spread = float(plain_error.std()) / math.sqrt(len(exact))   # standard error of a mean
    assert float(plain_error.mean()) > 10 * spread               # significantly biased up
    # the bootstrap is second-order accurate: it leaves a fraction of the bias
    assert abs(float(error.mean())) < 0.2 * float(plain_error.mean())
    torch.testing.assert_close(corrected.values, plain.values - corrected.bias)
    assert bool((corrected.bias > 0).all()) and bool((corrected.bias <= plain.values / 2).all())
    # the reported standard error is of the size of the spread it reports on
    ratio = float((corrected.standard_error / corrected.values).mean()) / float(error.std())
    assert 0.5 < ratio < 3


@pytest.mark.parametrize("method,difference,budget,used", [
    ("sketch", "forward", 50, 50), ("sketch", "central", 50, 49),
    ("max_rayleigh", "forward", 10, 9), ("sketch", "forward", 2, 2),
    ("sketch", "central", 3, 3)])
def test_queries_are_counted_and_never_exceed_the_budget(method, difference, budget, used):
    model, x = build("mlp", batch=3)
    counter = _Counter(_proba(model))
    result = blackbox_fisher_top_eigenvalue(counter, x, budget, method=method,
                                            difference=difference, batch_size=16,
                                            generator=torch.Generator().manual_seed(0))
    assert result.queries.dtype == torch.int64 and result.queries.tolist() == [used] * 3
    assert sum(counter.calls) == int(result.queries.sum())
    assert max(counter.calls) <= 16


def test_float32_black_box_uses_a_dtype_step():
    model, x = build("mlp")
    model32 = model.float()
    result = blackbox_fisher_top_eigenvalue(_proba(model32), x.float(), queries=13,
                                            generator=torch.Generator().manual_seed(0))
    rms = max(1.0, float(x.square().mean().sqrt()))
    assert math.isclose(result.step, math.sqrt(torch.finfo(torch.float32).eps) * rms
                        * math.sqrt(12), rel_tol=1e-6)
    exact = fisher_eigenvalues(model32, x.float(), dtype=torch.float64)[:, 0]
    torch.testing.assert_close(result.values, exact, rtol=5e-3, atol=0)


def test_debias_lowers_the_estimate_by_at_most_half():
    model, x = build("dense-concat", batch=4)
    kwargs = dict(queries=9, generator=torch.Generator().manual_seed(0))
    raw = blackbox_fisher_top_eigenvalue(_proba(model), x, debias=False, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    corrected = blackbox_fisher_top_eigenvalue(_proba(model), x, **kwargs)
    torch.testing.assert_close(corrected.values, raw.values - corrected.bias, rtol=0, atol=0)
    # the true bias is >= 0 (Jensen); a noisy bootstrap estimate is clipped to [0, top/2]
    assert bool((corrected.bias >= 0).all()) and bool((corrected.values >= raw.values / 2)
                                                      .all())
    assert float(corrected.bias.mean()) > 0


def test_device_argument_moves_the_queries():
    model, x = build("mlp")
    seen = []

    def predict_proba(z):
        seen.append(z.device)
        return _proba(model)(z)

    kwargs = dict(queries=13, generator=torch.Generator().manual_seed(0))
    default = blackbox_fisher_top_eigenvalue(_proba(model), x, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    on_cpu = blackbox_fisher_top_eigenvalue(predict_proba, x, device="cpu", **kwargs)
    assert set(seen) == {torch.device("cpu")}
    torch.testing.assert_close(on_cpu.values, default.values, rtol=0, atol=0)


@pytest.mark.montecarlo
def test_sketch_mean_is_biased_up_and_debias_removes_most_of_it():
    model, x = build("dense-concat", batch=2)
    exact = _exact(model, x)
    raw, corrected = [], []
    for seed in range(300):
        for store, debias in ((raw, False), (corrected, True)):
            store.append(blackbox_fisher_top_eigenvalue(
                _proba(model), x, queries=9, debias=debias,
                generator=torch.Generator().manual_seed(seed)).values)
    raw, corrected = torch.stack(raw).mean(0), torch.stack(corrected).mean(0)
    assert bool((raw > exact).all())                                   # Jensen
    assert bool(((corrected - exact).abs() < (raw - exact).abs()).all())


@pytest.mark.montecarlo
def test_median_error_at_200_queries_on_a_large_input():
    torch.manual_seed(1)
    model = MLP(d=768, hidden=32, k=10).double().eval()
    x = torch.randn(48, 768, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = blackbox_fisher_top_eigenvalue(_proba(model), x, 200,
                                            generator=torch.Generator().manual_seed(0))
    exact = _exact(model, x)
    assert float(((result.values - exact) / exact).abs().median()) <= 0.10


def _error(match, predict_proba=None, x=None, **kwargs):
    model, default_x = build("mlp")
    with pytest.raises(InputError, match=match):
        blackbox_fisher_top_eigenvalue(predict_proba or _proba(model),
                                       default_x if x is None else x, **kwargs)


def test_bad_input():
    _, x = build("mlp")
    _error(r"queries too small: method='sketch' with forward differences needs at least 2",
           queries=1)
    _error(r"queries too small: .* central differences needs at least 3", queries=2,
           difference="central")
    _error(r"queries too small: method='max_rayleigh'", queries=2, method="max_rayleigh")
    _error(r"expected queries to be an integer >= 1, got 2.5", queries=2.5)
    _error(r"it returns logits, apply softmax", predict_proba=lambda z: 3 * z[:, :5])
    _error(r"shape \(n, K\) = \(3, K\), got shape \(3,\)",
           predict_proba=lambda z: torch.full((z.shape[0],), 1.0))
    _error(r"returned NaN or inf", predict_proba=lambda z: torch.full((z.shape[0], 3), math.nan))
    _error(r"at least K = 2 classes, got K = 1",
           predict_proba=lambda z: torch.ones(z.shape[0], 1, dtype=z.dtype))
    bad = x.clone()
    bad[1, 3] = math.inf
    _error(r"expected finite inputs, got NaN or inf in rows \[1\]", x=bad)
    _error(r"expected a batch of at least one input", x=x[:0])
    _error(r"expected method in 'sketch', 'max_rayleigh', got 'power'", method="power")
    _error(r"expected difference 'forward' or 'central', got 'backward'",
           difference="backward")
    _error(r"expected predict_proba to be callable", predict_proba=3)
    _error(r"expected step to be a positive number, got -1", step=-1)
    _error(r"expected num_bootstrap to be an integer >= 2, got 1", num_bootstrap=1)
    _error(r"blackbox_fisher_top_eigenvalue: expected a device 'cpu', 'cuda', 'cuda:N', "
           r"'mps' or 'auto', got 'tpu'\.$", device="tpu")


def _rounding_tolerance(result, model, x):
    r"""Relative change of ``values`` that re-rounding ``log p`` can cause.

    Evaluating the same shifted inputs in batches of another size changes the BLAS
    summation order, so each ``log p`` moves by a few ulps, ``c eps |log p|`` (``c = 8``
    here). The sketch multiplies these by ``sqrt(d) / h`` (``A^T`` has norm <= 1), so each
    whitened sample ``w_i`` (K entries) moves by at most
    ``delta = sqrt(K d) c eps max|log p| / h``; ``sqrt(lambda_max)`` is the spectral norm
    of the stacked samples over ``sqrt(m)``, so it moves by at most ``delta`` and
    ``lambda_max`` by ``2 delta sqrt(lambda) + delta^2``.
    """
    with torch.no_grad():
        log_p = torch.log_softmax(model(x), dim=-1)
    classes, dim = log_p.shape[1], x[0].numel()
    eps = torch.finfo(x.dtype).eps
    delta = (math.sqrt(classes * dim) * 8 * eps * log_p.abs().amax(dim=1) / result.step)
    return (2 * delta * result.values.sqrt() + delta ** 2) / result.values


def test_perturbations_are_evaluated_in_chunks(monkeypatch):
    from numeric.fisher import blackbox as blackbox_module
    model, x = build("mlp", batch=3)
    whole = blackbox_fisher_top_eigenvalue(_proba(model), x, 40,
                                           generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(blackbox_module, "MAX_PERTURBATION_ENTRIES", 3 * 12 * 5)
    counter = _Counter(_proba(model))
    chunked = blackbox_fisher_top_eigenvalue(counter, x, 40,
                                             generator=torch.Generator().manual_seed(0))
    tolerance = _rounding_tolerance(whole, model, x)
    assert bool((tolerance < 1e-5).all())   # far below any sampling or direction change
    assert bool(((chunked.values - whole.values).abs()
                 <= tolerance * whole.values).all())
    assert sum(counter.calls) == 3 * 40 and max(counter.calls) <= 15


@pytest.mark.parametrize("count,classes", [(3, 7), (7, 3), (5, 5)])
def test_sketch_spectrum_from_the_smaller_gram_matrix(count, classes):
    from numeric.fisher.sketch import sketch_spectrum
    samples = torch.randn(2, count, classes, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(count))
    dense = torch.linalg.eigvalsh(samples.transpose(1, 2) @ samples / count).flip(-1)
    torch.testing.assert_close(sketch_spectrum(samples), dense, rtol=0, atol=1e-12)
