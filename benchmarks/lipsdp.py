"""LipSDP next to the toolkit's global Lipschitz bound on small ReLU MLPs (digits, 8x8).

LipSDP-Neuron (Fazlyab, Robey, Hassani, Morari and Pappas, NeurIPS 2019,
arXiv:1906.04893) bounds the l2 Lipschitz constant of
:math:`f = W_l \\phi(W_{l-1} \\cdots \\phi(W_0 x))` with :math:`\\phi` slope-restricted in
:math:`[0, 1]` by :math:`\\sqrt{\\rho}` for the smallest :math:`\\rho` such that, with
:math:`A = [\\mathrm{blkdiag}(W_0, \\dots, W_{l-1}) \\; 0]`, :math:`B = [0 \\; I]` and
:math:`T = \\mathrm{diag}(t) \\succeq 0`,

.. math:: A^\\top T B + B^\\top T A - 2 B^\\top T B
          + \\mathrm{blkdiag}(-\\rho I, 0, \\dots, 0, W_l^\\top W_l) \\preceq 0 .

It is solved here with cvxpy and SCS (a first-order conic solver, tolerance 1e-6, on
unit-norm layers; interior-point solvers such as Clarabel form a dense system in the PSD
cone's :math:`n(n+1)/2` entries and need minutes at n = 128), which gives a reference value,
not a certificate, and only for models this small. Next to it:

- the toolkit's certified bound, ``trace_model(model, x).lipschitz_bound(quantity)`` for
  the logits (``'output'``) and the centred logits (``'centred_output'``, what the Fisher
  information depends on; LipSDP then uses :math:`CW_l`, :math:`C = I - 11^\\top/K`);
- the largest Jacobian norm found by gradient ascent over inputs (a lower bound on the
  true constant): Adam on :math:`\\|J(x)\\|_2` of the network with ReLU replaced by a
  softplus whose sharpness grows to ReLU, from data points and random starts, each iterate
  scored with the exact ReLU Jacobian.

Benchmark only: nothing here is part of the library.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from benchmarks._threads import single_threaded

__all__ = ["run", "lipsdp", "jacobian_ascent", "mlp"]


def mlp(widths: list[int], seed: int) -> nn.Sequential:
    """Flatten, then Linear + ReLU per hidden width, then Linear to 10 logits (float64)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    previous = 64
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    layers.append(nn.Linear(previous, 10))
    return nn.Sequential(*layers).double().eval()


def _weights(model: nn.Sequential) -> list[torch.Tensor]:
    return [m.weight.detach().double() for m in model if isinstance(m, nn.Linear)]


def lipsdp(weights: list[torch.Tensor], centred: bool = False) -> tuple[float, float, str]:
    """(LipSDP-Neuron value, solver seconds, solver status) for a ReLU MLP's weights.

    The matrix inequality is linear in :math:`t`: :math:`\sum_i t_i S_i` with
    :math:`S_i = a_i e_i^\top + e_i a_i^\top - 2 e_i e_i^\top` (:math:`a_i` the i-th row of
    :math:`A`, :math:`e_i` that of :math:`B`), passed to cvxpy as one sparse map.
    """
    import cvxpy as cp
    import numpy as np
    import scipy.sparse as sparse
    *hidden, last = [w.numpy() for w in weights]
    if centred:
        k = last.shape[0]
        last = (np.eye(k) - np.ones((k, k)) / k) @ last
    # ReLU is positively homogeneous: W_k = c_k V_k gives f_W = (prod c_k) f_V exactly, so
    # the SDP is solved for unit-norm layers (far better conditioned) and scaled back
    scales = [float(np.linalg.norm(w, 2)) for w in (*hidden, last)]
    hidden = [w / c for w, c in zip(hidden, scales)]
    last = last / scales[-1]
    n0 = hidden[0].shape[1]
    n = sum(w.shape[0] for w in hidden)
    size = n0 + n
    a = np.zeros((n, size))
    row, column = 0, 0
    for w in hidden:
        a[row:row + w.shape[0], column:column + w.shape[1]] = w
        row, column = row + w.shape[0], column + w.shape[1]
    rows, columns, values = [], [], []
    for i in range(n):
        e = n0 + i                                       # B's i-th row is e_{n0 + i}
        support = np.nonzero(a[i])[0]
        for j in support:                                # a_i e^T + e a_i^T
            rows += [j * size + e, e * size + j]
            columns += [i, i]
            values += [a[i, j], a[i, j]]
        rows.append(e * size + e)
        columns.append(i)
        values.append(-2.0)
    lifting = sparse.csr_matrix((values, (rows, columns)), shape=(size * size, n))
    constant = np.zeros((size, size))
    width = hidden[-1].shape[0]
    constant[-width:, -width:] = last.T @ last
    first = np.zeros((size, size))
    first[:n0, :n0] = np.eye(n0)
    t = cp.Variable(n, nonneg=True)
    rho = cp.Variable()
    matrix = cp.reshape(lifting @ t, (size, size), order="C") - rho * first + constant
    problem = cp.Problem(cp.Minimize(rho), [0.5 * (matrix + matrix.T) << 0])
    start = time.perf_counter()
    problem.solve(solver=cp.SCS, eps=1e-6, max_iters=50_000)
    if problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"lipsdp: solver status {problem.status}")
    seconds = time.perf_counter() - start
    return float(np.sqrt(rho.value)) * math.prod(scales), seconds, problem.status


def _centring(centred: bool, k: int = 10) -> torch.Tensor:
    return (torch.eye(k) - torch.ones(k, k) / k if centred else torch.eye(k)).double()


def _exact_norms(model: nn.Module, x: torch.Tensor, centring: torch.Tensor) -> torch.Tensor:
    """||C J(x_b)||_2 of the ReLU network at each row (float64, exact Jacobians)."""
    jacobians = torch.func.vmap(torch.func.jacrev(lambda z: model(z.unsqueeze(0))[0]))(x)
    return torch.linalg.matrix_norm(centring @ jacobians.reshape(len(x), 10, -1), ord=2)


def jacobian_ascent(model: nn.Sequential, starts: torch.Tensor, centred: bool = False,
                    steps: int = 150) -> float:
    """Largest exact ||J(x)||_2 met while ascending a softplus-smoothed surrogate (all
    starts at once)."""
    centring = _centring(centred)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    x = starts.reshape(len(starts), -1).clone().double().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=0.05)
    best = float(_exact_norms(model, x.detach(), centring).detach().max())
    for step in range(steps):
        sharpness = 2.0 * 100.0 ** (step / max(1, steps - 1))

        def smooth(z):
            for layer in linears[:-1]:
                z = nn.functional.softplus(layer(z), beta=sharpness)
            return linears[-1](z)

        jacobians = torch.func.vmap(torch.func.jacrev(smooth))(x)
        loss = -torch.linalg.matrix_norm(centring @ jacobians, ord=2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 9 or step == steps - 1:
            best = max(best, float(_exact_norms(model, x.detach(), centring).detach().max()))
    return best


def _models(quick: bool) -> list[tuple[str, nn.Sequential]]:
    from numeric.data import load_data
    from numeric.training import train
    specs = [("random 64-32-32-10", [32, 32], False), ("random 64-64-64-64-10", [64] * 3, False),
             ("trained 64-64-64-10", [64, 64], True), ("trained 64-32-32-32-10", [32] * 3, True)]
    if quick:
        specs = specs[:1] + specs[2:3]
    models = []
    data = load_data("digits", split="train")
    for label, widths, trained in specs:
        model = mlp(widths, seed=len(label))
        if trained:
            model = train(model.float(), data, epochs=10 if quick else 30, seed=0).double()
        models.append((label, model.eval()))
    return models


def run(quick: bool = False) -> str:
    """The Markdown section (benchmarks protocol)."""
    return single_threaded(_run, quick)


def _run(quick: bool) -> str:
    from numeric.data import load_data
    from numeric.graph import trace_model
    x = load_data("digits", split="test", samples=32, seed=0).x.double()
    generator = torch.Generator().manual_seed(0)
    starts = torch.cat([x[:4 if quick else 12],
                        torch.rand(4 if quick else 12, 1, 8, 8, generator=generator,
                                   dtype=torch.float64) * 4 - 2])
    lines = ["## LipSDP reference on small MLPs (digits, 8x8 inputs)", "",
             "Global l2 Lipschitz constant of the logits ('output') and of the centred "
             "logits ('centred'). Ratios: toolkit certified bound / LipSDP, LipSDP / largest "
             "Jacobian norm found by ascent, toolkit / ascent. LipSDP comes from a "
             "first-order conic solver (a reference, not a certificate).", "",
             "| model | quantity | toolkit | LipSDP | ascent | toolkit / LipSDP | "
             "LipSDP / ascent | toolkit / ascent | SDP s (status) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, model in _models(quick):
        traced = trace_model(model, x[:2], self_check=False)
        for quantity, centred in (("output", False), ("centred_output", True)):
            toolkit = traced.lipschitz_bound(quantity)
            reference, seconds, status = lipsdp(_weights(model), centred)
            found = jacobian_ascent(model, starts, centred, steps=60 if quick else 150)
            if toolkit < found * (1 - 1e-9):
                raise AssertionError(f"lipsdp: toolkit bound {toolkit} below a measured "
                                     f"Jacobian norm {found} ({label}, {quantity})")
            lines.append(f"| {label} | {quantity} | {toolkit:.4g} | {reference:.4g} | "
                         f"{found:.4g} | {toolkit / reference:.3f} | {reference / found:.3f} | "
                         f"{toolkit / found:.3f} | {seconds:.1f} ({status}) |")
    lines += ["", "LipSDP-Neuron (Fazlyab et al. 2019) with the SCS solver (eps 1e-6); the "
                  "ascent runs Adam on a softplus surrogate from data points and uniform random "
                  "inputs in [-2, 2] and scores each iterate with the exact ReLU Jacobian.",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys
    print(run(quick="--quick" in sys.argv))
