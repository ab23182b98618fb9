"""The minimum-norm ensemble and PGD against cases whose answer is known in closed form or by
brute force; each ensemble member on its own and the float64 verification are in
test_attacks_members.py."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from numeric.attacks import (FALLBACK_ATTACKS, AttackResult, minimum_norm_attack, pgd_attack,
                             robust_accuracy)
from numeric.errors import InputError
from tests.numeric.attack_oracles import brute_force_minimum


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest


def _affine(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    model = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


def _affine_problem(dim: int, classes: int, samples: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(classes, generator=generator, dtype=torch.float64)
    x = torch.randn(samples, dim, generator=generator, dtype=torch.float64)
    model = _affine(weight, bias)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, weight, x, y


def _affine_minimum(model: nn.Linear, weight: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """min_j (f_y − f_j) / ‖w_y − w_j‖₂: the exact unboxed minimal L2 perturbation."""
    with torch.no_grad():
        logits = model(x)
    gaps = logits.gather(1, y[:, None]) - logits
    distances = gaps / (weight[y][:, None, :] - weight[None]).norm(dim=2)
    return distances.scatter(1, y[:, None], math.inf).min(dim=1).values


def _small_convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 36, 5))


# --------------------------------------------------------------- minimum-norm attack

@pytest.mark.parametrize("dim, classes", [(20, 2), (64, 10), (192, 5)],
                         ids=["binary", "ten-class", "colour-8x8"])
def test_minimum_norm_is_exact_on_affine_models(dim, classes):
    model, weight, x, y = _affine_problem(dim, classes, 16, seed=dim)
    result = minimum_norm_attack(model, x, y, bounds=None, steps=30)
    exact = _affine_minimum(model, weight, x, y)
    relative = (result.norms - exact) / exact
    assert relative.abs().max() < 1e-3
    assert relative.min() > -1e-9  # a "successful" perturbation below the minimum is a bug
    assert result.success.all()


def test_minimum_norm_result_is_verified_and_consistent():
    model, _, x, y = _affine_problem(30, 6, 16, seed=3)
    result = minimum_norm_attack(model, x, y, bounds=None, steps=30)
    assert isinstance(result, AttackResult)
    assert result.delta.shape == x.shape and result.norms.shape == (16,)
    assert result.adversarial.dtype == result.norms.dtype == torch.float64
    torch.testing.assert_close(result.delta.norm(dim=1), result.norms)
    torch.testing.assert_close((result.adversarial - x).norm(dim=1), result.norms,
                               rtol=0, atol=0)
    with torch.no_grad():
        assert (model(result.adversarial).argmax(dim=1) != y).all()
    assert len(result.found_by) == 16 and set(result.found_by) <= set(result.attacks)


def _boxed_reference(model: nn.Linear, x: np.ndarray, label: int) -> float:
    """min ‖u − x‖ over u in [0, 1]^d with some class j ≠ label winning, by SLSQP."""
    from scipy.optimize import minimize
    weight = model.weight.detach().numpy()
    bias = model.bias.detach().numpy()
    best = math.inf
    for j in range(weight.shape[0]):
        if j == label:
            continue
        w, b = weight[j] - weight[label], bias[j] - bias[label]
        solution = minimize(lambda u: 0.5 * np.sum((u - x) ** 2), x, jac=lambda u: u - x,
                            method="SLSQP", bounds=[(0.0, 1.0)] * len(x),
                            constraints=[{"type": "ineq", "fun": lambda u: w @ u + b,
                                          "jac": lambda u: w}],
                            options={"ftol": 1e-14, "maxiter": 500})
        if solution.success and w @ solution.x + b >= -1e-9:
            best = min(best, float(np.linalg.norm(solution.x - x)))
    return best


def test_minimum_norm_respects_the_box_and_matches_a_qp():
    generator = torch.Generator().manual_seed(7)
    model = _affine(torch.randn(3, 16, generator=generator, dtype=torch.float64),
                    torch.zeros(3, dtype=torch.float64))
    # inputs at the corners of the box, so the unboxed optimum would leave it
    x = (torch.rand(12, 16, generator=generator, dtype=torch.float64) > 0.5).double()
    x = x * 0.9 + 0.05 * torch.rand(12, 16, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    result = minimum_norm_attack(model, x, y, steps=30)
    adversarial = result.adversarial
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    reference = torch.tensor([_boxed_reference(model, x[i].numpy(), int(y[i]))
                              for i in range(12)], dtype=torch.float64)
    unboxed = minimum_norm_attack(model, x, y, bounds=None, attacks=FALLBACK_ATTACKS).norms
    assert (reference > unboxed * 1.01).any()  # the box binds for some samples
    finite = torch.isfinite(reference)
    assert (torch.isfinite(result.norms) == finite).all()
    relative = (result.norms[finite] - reference[finite]) / reference[finite]
    assert relative.abs().max() < 1e-3


@pytest.mark.parametrize("seed", [0, 2])
def test_minimum_norm_matches_brute_force_on_a_relu_net(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3)).double()
    x = torch.rand(6, 2, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    result = minimum_norm_attack(model, x, y, bounds=None, restarts=8, attacks=FALLBACK_ATTACKS)
    assert result.success.all()
    for i in range(6):
        grid = torch.linspace(0.0, 1.02 * float(result.norms[i]), 160, dtype=torch.float64)
        truth = brute_force_minimum(model, x[i], y[i], lambda directions: grid)
        assert float(result.norms[i]) >= truth * (1 - 1e-4)  # brute force's own resolution
        assert float(result.norms[i]) <= truth * (1 + 1e-2)


def test_already_misclassified_get_radius_zero():
    model, _, x, y = _affine_problem(10, 4, 8, seed=1)
    wrong = y.clone()
    wrong[::2] = (y[::2] + 1) % 4
    result = minimum_norm_attack(model, x, wrong, bounds=None, attacks=FALLBACK_ATTACKS)
    assert (result.norms[::2] == 0).all() and result.success[::2].all()
    assert result.found_by[::2] == ("clean",) * 4
    assert (result.delta[::2] == 0).all()
    assert (result.norms[1::2] > 0).all()


def test_no_adversarial_example_gives_inf():
    model = _affine(torch.zeros(3, 4), torch.tensor([1.0, 0.0, 0.0]))  # always class 0
    x = torch.rand(5, 4)
    result = minimum_norm_attack(model, x, torch.zeros(5, dtype=torch.long), steps=10)
    assert torch.isinf(result.norms).all() and not result.success.any()
    assert (result.delta == 0).all() and result.found_by == ("none",) * 5
    assert all(torch.isinf(norms).all() for norms in result.member_norms.values())


def test_minimum_norm_on_images_stays_in_box_and_keeps_modes():
    model = _small_convnet()
    model.train()
    model[4].eval()  # a mixed-mode model comes back exactly as it was
    x = torch.rand(10, 1, 6, 6)
    with torch.no_grad():
        y = model.eval()(x).argmax(dim=1)
    model.train()
    model[4].eval()
    result = minimum_norm_attack(model, x, y, steps=10)
    assert [m.training for m in model] == [True, True, True, True, False, True]
    assert all(p.grad is None for p in model.parameters())
    adversarial = result.adversarial
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    float64_copy = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        flipped = float64_copy(adversarial).argmax(dim=1) != y
    assert (flipped == result.success).all()


def test_minimum_norm_is_deterministic():
    model, x = _small_convnet(1).eval(), torch.rand(6, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    first = minimum_norm_attack(model, x, y, steps=5, generator=torch.Generator().manual_seed(4))
    again = minimum_norm_attack(model, x, y, steps=5, generator=torch.Generator().manual_seed(4))
    default = minimum_norm_attack(model, x, y, steps=5)
    assert torch.equal(first.adversarial, again.adversarial)
    assert first.found_by == again.found_by
    assert torch.equal(default.adversarial, minimum_norm_attack(model, x, y, steps=5).adversarial)


def test_minimum_norm_batches_agree():
    model, _, x, y = _affine_problem(12, 3, 9, seed=5)
    # no member draws random numbers here, so batches see the same problem as the whole
    whole = minimum_norm_attack(model, x, y, bounds=None, restarts=0, attacks=FALLBACK_ATTACKS)
    parts = minimum_norm_attack(model, x, y, bounds=None, restarts=0, batch_size=4,
                                attacks=FALLBACK_ATTACKS)
    torch.testing.assert_close(whole.norms, parts.norms)


# ------------------------------------------------------------------------------- PGD

def _binary_affine(dim: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(2, dim, generator=generator, dtype=torch.float64)
    model = _affine(weight, torch.zeros(2, dtype=torch.float64))
    x = torch.randn(40, dim, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, weight, x, y


@pytest.mark.parametrize("norm, dual", [("linf", 1), ("l2", 2)])
def test_pgd_reaches_the_affine_optimum(norm, dual):
    """Binary affine model: the worst point in the ball is x − eps·(w_y − w_j)/‖·‖ (L2)
    or x − eps·sign(w_y − w_j) (L∞), lowering the margin by eps·‖w_y − w_j‖_dual."""
    model, weight, x, y = _binary_affine()
    eps = 0.5
    other = 1 - y
    direction = weight[y] - weight[other]
    with torch.no_grad():
        margin = (model(x).gather(1, y[:, None]) - model(x).gather(1, other[:, None])).squeeze(1)
    robust = margin > eps * direction.norm(p=dual, dim=1) + 1e-9
    assert 0 < robust.sum() < len(y)
    # sign steps reach an L∞ vertex exactly from anywhere; an L2 iterate only approaches
    # the optimal direction geometrically from a random start, so that one starts at x
    adversarial = pgd_attack(model, x, y, eps=eps, norm=norm, steps=20, bounds=None,
                             random_start=norm == "linf")
    if norm == "linf":
        optimum = x - eps * direction.sign()
    else:
        optimum = x - eps * direction / direction.norm(dim=1, keepdim=True)
    torch.testing.assert_close(adversarial[robust], optimum[robust], rtol=0, atol=1e-9)
    with torch.no_grad():
        assert (model(adversarial[~robust]).argmax(1) != y[~robust]).all()


@pytest.mark.parametrize("norm, dual", [("linf", 1), ("l2", 2)])
def test_robust_accuracy_of_a_multiclass_affine_model_is_exact(norm, dual):
    model, weight, x, y = _affine_problem(16, 5, 200, seed=11)
    eps = 0.1
    with torch.no_grad():
        logits = model(x)
    gaps = logits.gather(1, y[:, None]) - logits
    cost = eps * (weight[y][:, None, :] - weight[None]).norm(p=dual, dim=2)
    truly_robust = ((gaps - cost).scatter(1, y[:, None], math.inf) > 0).all(dim=1)
    measured = robust_accuracy(model, x, y, eps, norm, steps=30, restarts=2, bounds=None)
    assert 0.05 < truly_robust.double().mean() < 0.95
    assert measured == pytest.approx(truly_robust.double().mean().item(), abs=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("loss", ["alternate", "ce", "margin"])
def test_pgd_never_exceeds_eps_or_the_box(norm, loss):
    model = _small_convnet(2).eval()
    x = torch.rand(16, 1, 6, 6)
    x[:, :, :2] = 0.0  # pixels on the box boundary
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    eps = 0.3 if norm == "l2" else 0.03
    adversarial = pgd_attack(model, x, y, eps=eps, norm=norm, steps=15, restarts=3, loss=loss)
    delta = (adversarial - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (size <= eps * (1 + 1e-6)).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_pgd_is_deterministic_and_keeps_modes():
    model = _small_convnet(3)
    model.train()
    x = torch.rand(8, 1, 6, 6)
    y = torch.arange(8) % 5
    first = pgd_attack(model, x, y, eps=0.5, steps=5, restarts=2,
                       generator=torch.Generator().manual_seed(9))
    again = pgd_attack(model, x, y, eps=0.5, steps=5, restarts=2,
                       generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, again)
    assert model.training and all(m.training for m in model)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_keep_last_returns_the_final_iterate():
    model, weight, x, y = _binary_affine(seed=1)
    last = pgd_attack(model, x, y, eps=0.05, norm="linf", steps=20, bounds=None, keep="last",
                      loss="margin")
    optimum = x - 0.05 * (weight[y] - weight[1 - y]).sign()
    torch.testing.assert_close(last, optimum, rtol=0, atol=1e-9)


def test_robust_accuracy_at_zero_is_clean_accuracy():
    model, _, x, y = _affine_problem(8, 3, 30, seed=2)
    y = y.clone()
    y[:6] = (y[:6] + 1) % 3
    assert robust_accuracy(model, x, y, 0.0, bounds=None) == pytest.approx(24 / 30)


# ---------------------------------------------------------------------------- errors

def _valid():
    return _small_convnet().eval(), torch.rand(2, 1, 6, 6), torch.tensor([0, 1])


@pytest.mark.parametrize("change, match", [
    (dict(x=torch.zeros(2, dtype=torch.long)), r"expected x as a floating Tensor of shape"),
    (dict(y=torch.tensor([0.0, 1.0])), r"expected y as an int64 Tensor of shape \(2,\)"),
    (dict(y=torch.tensor([0, 1, 2])), r"expected y as an int64 Tensor of shape \(2,\), got "
                                      r"torch.int64 of shape \(3,\)"),
    (dict(x=torch.full((2, 1, 6, 6), 2.0)), r"expected x inside bounds \(0.0, 1.0\)"),
    (dict(bounds=(1.0, 0.0)), r"expected bounds \(low, high\) with low < high"),
    (dict(steps=0), "expected an integer steps >= 1, got 0"),
    (dict(restarts=-1), "expected an integer restarts >= 0, got -1"),
    (dict(candidates=0), "expected an integer candidates >= 1, got 0"),
    (dict(model="net"), "expected a callable model, got str"),
    (dict(x=torch.full((2, 1, 6, 6), math.nan), bounds=None), "expected finite x, got NaN"),
    (dict(batch_size=0), "expected an integer batch_size >= 1, got 0"),
], ids=["x", "y-dtype", "y-shape", "outside-box", "bounds", "steps", "restarts", "candidates",
        "model", "nan", "batch-size"])
def test_minimum_norm_errors(change, match):
    model, x, y = _valid()
    arguments = dict(model=model, x=x, y=y)
    arguments.update({k: v for k, v in change.items() if k in arguments})
    options = {k: v for k, v in change.items() if k not in arguments}
    with pytest.raises(InputError, match="minimum_norm_attack: " + match):
        minimum_norm_attack(arguments["model"], arguments["x"], arguments["y"], **options)


@pytest.mark.parametrize("change, match", [
    (dict(eps=-0.1), "expected a finite eps >= 0, got -0.1"),
    (dict(eps=math.inf), "expected a finite eps >= 0, got inf"),
    (dict(norm="l1"), "expected norm 'l2' or 'linf', got 'l1'"),
    (dict(restarts=0), "expected an integer restarts >= 1, got 0"),
    (dict(step_size=0.0), "expected a step_size > 0, got 0.0"),
    (dict(loss="hinge"), "expected loss in ce, margin, alternate, got 'hinge'"),
    (dict(keep="best"), "expected keep 'first' or 'last', got 'best'"),
], ids=["negative", "infinite", "norm", "restarts", "step", "loss", "keep"])
def test_pgd_errors(change, match):
    model, x, y = _valid()
    options = dict(eps=0.1, **{k: v for k, v in change.items() if k != "eps"})
    options["eps"] = change.get("eps", 0.1)
    with pytest.raises(InputError, match="pgd_attack: " + match):
        pgd_attack(model, x, y, **options)


def test_robust_accuracy_needs_samples():
    model = _small_convnet().eval()
    with pytest.raises(InputError, match="robust_accuracy: expected at least one sample, got 0"):
        robust_accuracy(model, torch.zeros(0, 1, 6, 6), torch.zeros(0, dtype=torch.long), 0.1)
