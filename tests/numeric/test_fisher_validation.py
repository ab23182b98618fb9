"""Bad input to the white-box estimators: one clear InputError per documented case."""

import math

import pytest
import torch
from torch import nn

from numeric.errors import InputError, NumericError
from numeric.fisher import (fisher_eigenvalues, fisher_top_eigenvalue, fisher_trace,
                            fisher_vector_product)
from tests.numeric.fisher_models import ProbabilityModel, build

ESTIMATORS = {
    "fisher_eigenvalues": lambda m, x, **kw: fisher_eigenvalues(m, x, **kw),
    "fisher_top_eigenvalue": lambda m, x, **kw: fisher_top_eigenvalue(m, x, **kw),
    "fisher_trace": lambda m, x, **kw: fisher_trace(m, x, **kw),
    "fisher_vector_product": lambda m, x, **kw: fisher_vector_product(
        m, x, torch.ones_like(x) if isinstance(x, torch.Tensor) else x, **kw),
}


@pytest.fixture(params=sorted(ESTIMATORS))
def estimator(request):
    return request.param, ESTIMATORS[request.param]


def test_probability_outputs_are_detected(estimator):
    name, call = estimator
    model = ProbabilityModel().double()
    x = torch.randn(3, 12, dtype=torch.float64)
    with pytest.raises(InputError, match=rf"{name}: the model seems to return probabilities"
                                         r".* it must return logits"):
        call(model, x)


def test_log_softmax_outputs_are_valid_logits():
    model, x = build("mlp")
    log_model = nn.Sequential(model, nn.LogSoftmax(dim=-1))
    torch.testing.assert_close(fisher_eigenvalues(log_model, x), fisher_eigenvalues(model, x))


def test_non_finite_inputs(estimator):
    name, call = estimator
    model, x = build("mlp")
    x[2, 0] = math.nan
    with pytest.raises(InputError, match=rf"{name}: expected finite inputs, got NaN or inf "
                                         r"in rows \[2\]"):
        call(model, x)


def test_empty_batch(estimator):
    name, call = estimator
    model, x = build("mlp")
    with pytest.raises(InputError, match=r"expected a batch of at least one input, got shape "
                                         r"\(0, 12\)"):
        call(model, x[:0])


def test_one_class(estimator):
    name, call = estimator
    model = nn.Linear(12, 1).double()
    with pytest.raises(InputError, match=r"expected at least K = 2 classes, got K = 1"):
        call(model, torch.randn(2, 12, dtype=torch.float64))


def test_missing_batch_dimension(estimator):
    name, call = estimator
    model, x = build("mlp")
    with pytest.raises(InputError, match=r"expected x of shape \(B, \.\.\.\) with a batch "
                                         r"dimension, got shape \(12,\)"):
        call(model, x[0])


def test_wrong_output_shape(estimator):
    name, call = estimator

    class Flat(nn.Module):
        def forward(self, x):
            return x.sum()

    with pytest.raises(InputError, match=r"logits of shape \(B, K\) = \(3, K\), got shape "
                                         r"\(\)"):
        call(Flat(), torch.randn(3, 12))


def test_model_failing_on_the_input_shape(estimator):
    name, call = estimator
    model, _ = build("mlp")
    with pytest.raises(InputError, match=r"the model failed on inputs of shape \(3, 5\)"):
        call(model, torch.randn(3, 5, dtype=torch.float64))


def test_non_finite_logits(estimator):
    name, call = estimator

    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x)  # NaN for negative inputs

    x = -torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(InputError, match=r"returned NaN or inf logits in rows \[0, 1\]"):
        call(Log(), x)


def test_argument_errors():
    model, x = build("mlp")
    cases = [
        (lambda: fisher_top_eigenvalue(model, x, "svd"),
         r"expected method in 'auto', 'exact', 'lanczos', 'power', got 'svd'"),
        (lambda: fisher_top_eigenvalue(model, x, "lanczos", k=5),
         r"expected 1 <= k <= K - 1 = 4 \(F has rank at most K - 1\), got k = 5"),
        (lambda: fisher_top_eigenvalue(model, x, "power", k=2),
         r"power iteration finds only the top eigenvalue"),
        (lambda: fisher_top_eigenvalue(model, x, tol=0), r"expected tol to be a positive"),
        (lambda: fisher_top_eigenvalue(model, x, max_iter=0),
         r"expected max_iter to be an integer >= 1, got 0"),
        (lambda: fisher_top_eigenvalue(model, x, generator=3), r"torch.Generator or None"),
        (lambda: fisher_top_eigenvalue(model, x, dtype=torch.int64), r"floating torch.dtype"),
        (lambda: fisher_trace(model, x, "hutch++", num_probes=2),
         r"expected num_probes to be an integer >= 3, got 2"),
        (lambda: fisher_trace(model, x, "girard"), r"expected method in 'exact'"),
        (lambda: fisher_eigenvalues(lambda z: z, x), r"expected model to be a torch.nn.Module"),
        (lambda: fisher_eigenvalues(model, x.long()), r"expected a floating-point x"),
        (lambda: fisher_vector_product(model, x, torch.ones(3, 5)),
         r"expected v of the same shape as x \(3, 12\), got \(3, 5\)"),
    ]
    for call, match in cases:
        with pytest.raises(InputError, match=match):
            call()


def test_errors_are_numeric_errors_and_value_errors():
    model, x = build("mlp")
    with pytest.raises(InputError) as info:
        fisher_eigenvalues(model, x[:0])
    assert isinstance(info.value, NumericError) and isinstance(info.value, ValueError)
