"""numeric.validation: eval-mode context, one-line messages, batch and integer checks."""

import math

import pytest
import torch

from numeric.errors import InputError
from numeric.validation import check_batch, check_positive_int, eval_mode, first_line


def test_eval_mode_restores_every_submodules_own_flag_even_on_error():
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Dropout(),
                                torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout()))
    model[2][1].eval()
    before = [module.training for module in model.modules()]
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            assert not any(module.training for module in model.modules())
            raise RuntimeError("inside")
    assert [module.training for module in model.modules()] == before
    with pytest.raises(InputError, match="eval_mode: expected a torch.nn.Module, got str"):
        with eval_mode("model"):
            pass


@pytest.mark.parametrize(("message", "line"), [
    ("size mismatch (3 vs 4)\n\nWhile executing %addmm : [num_users=1] = call_function\n"
     "Original traceback:\n  File \"net.py\", line 3", "size mismatch (3 vs 4)"),
    ("\n\n  Weights only load failed.\nCheck the documentation of torch.load to learn more",
     "Weights only load failed."),
    ("While executing %x\nreal reason", "real reason"),
], ids=["fx-noise", "leading-blank-lines", "noise-first"])
def test_first_line_keeps_the_message_and_drops_torch_noise(message, line):
    assert first_line(RuntimeError(message)) == line


def test_first_line_of_an_empty_message_is_the_type():
    assert first_line(ZeroDivisionError()) == "ZeroDivisionError"
    assert first_line(KeyError("fc")) == "'fc'"


@pytest.mark.parametrize(("x", "match"), [
    ([[1.0]], "f: expected a torch.Tensor, got list"),
    (torch.zeros(2, 3, dtype=torch.int64), "f: expected a floating tensor, got torch.int64"),
    (torch.zeros(3), r"expected a batch of shape \(B, ...\) with at least 2 dimensions, got "
                     r"shape \(3,\)"),
    (torch.zeros(0, 3), r"f: expected a non-empty batch, got shape \(0, 3\)"),
    (torch.zeros(2, 0), r"f: expected a non-empty batch, got shape \(2, 0\)"),
    (torch.tensor([[0.0, 1.0], [math.nan, 0.0]]), "expected finite entries, got NaN in row 1"),
    (torch.tensor([[math.inf, 1.0], [0.0, 0.0]]), "got an infinite entry in row 0"),
], ids=["list", "int", "one-dim", "no-rows", "empty-rows", "nan", "inf"])
def test_check_batch_names_the_problem(x, match):
    with pytest.raises(InputError, match=match):
        check_batch("f", x)


def test_check_batch_returns_a_good_batch_and_honours_min_dim():
    x = torch.zeros(2, 1, 8, 8)
    assert check_batch("f", x, min_dim=4) is x
    with pytest.raises(InputError, match="at least 5 dimensions"):
        check_batch("f", x, min_dim=5)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "3", None])
def test_check_positive_int_refuses(value):
    with pytest.raises(InputError, match=f"g: expected k to be an integer >= 1, got "
                                          f"{value!r}"):
        check_positive_int("g", "k", value)


def test_check_positive_int_accepts_integral_types():
    assert check_positive_int("g", "k", 3) == 3
    assert check_positive_int("g", "k", torch.tensor(4).item()) == 4
