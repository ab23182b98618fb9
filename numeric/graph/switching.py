r"""Certified bounds on the Jacobian over a ball from what the ball can switch.

In the domain of :mod:`numeric.graph.crown` (affine operations, ReLU and 2-d max pooling)
the Jacobian is piecewise constant: at a point :math:`x'` it is the product of the affine
maps and of the *switches* — each ReLU's 0/1 diagonal :math:`S_i` and each max pool's
selection — at :math:`x'`. Write the switch at :math:`x'` as :math:`S_i + E_i` with
:math:`S_i` its value at the centre :math:`x`. Over the ball, linear bound propagation
gives every switch input an interval (:class:`~numeric.graph.crown.LinearBounds`), so
:math:`E_i` can only be nonzero

* for a ReLU, at the entries whose interval contains 0 (the set :math:`U_i`, rows and
  columns), with :math:`|E_i| \le 1` entrywise (any Clarke value in [0, 1]), so
  :math:`\|E_i\| \le e_i = 1`;
* for max pooling, at the windows whose maximum the intervals leave open (rows
  :math:`R_i`), reading only the entries of those windows that can be their maximum
  (columns :math:`C_i`, which include the centre's choice); each row of :math:`E_i` is a
  selection (or a convex combination of them) minus the centre's, with absolute sum
  :math:`\le 2`, and each column has at most :math:`m` entries of size :math:`\le 1`
  (:math:`m` open windows containing that entry), so
  :math:`\|E_i\|_2 \le \sqrt{\|E_i\|_1\|E_i\|_\infty} \le e_i = \sqrt{2m}`.

**Proof of the bound.** Let :math:`B'_i = \partial\,\mathrm{in}_i / \partial x` at
:math:`x'` (the Jacobian of switch :math:`i`'s input) and :math:`B_i` the same at the
centre. Every value of the graph is affine in the switch outputs before it, so by
induction over the graph
:math:`B'_j - B_j = \sum_{i < j} G_{j,i} E_i B'_i`, where :math:`G_{j,i}` is the
centre's Jacobian from switch :math:`i`'s output to switch :math:`j`'s input (all paths,
centre switches), and likewise :math:`CJ(x') - CJ(x) = \sum_i A_i E_i B'_i` with
:math:`A_i` the centre's Jacobian from switch :math:`i`'s output to the centred logits
:math:`C f`. Since :math:`E_i = P_{R_i} E_i P_{C_i}` (projections onto its rows and
columns), :math:`\beta_i \ge \|E_i B'_i\|` holds for

.. math::

    \beta_j = e_j\Big(b_j + \sum_{i<j} c_{j,i}\,\beta_i\Big),\quad
    b_j = \|P_{C_j} B_j\|,\; c_{j,i} = \|P_{C_j} G_{j,i} P_{R_i}\|,

and :math:`\sup_{\|x'-x\| \le \varepsilon} \|CJ(x')\| \le \|CJ(x)\| + \sum_i a_i \beta_i`
with :math:`a_i = \|A_i P_{R_i}\|`. Every norm is of a centre Jacobian restricted to the
entries the ball can switch: no product of layer norms enters, and where the ball
switches nothing the bound is the exact norm at the centre.

Each :math:`P_{C_j} G_{j,\cdot}` and :math:`P_{C_j} B_j` comes from one batched backward
pass at the centre with :math:`|C_j|` one-hot cotangents (and the :math:`A_i` from one
with the :math:`K` rows of :math:`C`); spectral norms from the smaller Gram matrix,
widened for rounding as in :func:`numeric.graph.tangent.spectral_of_rows`.

References
----------
Shi et al., "Efficiently Computing Local Lipschitz Constants of Neural Networks via Bound
Propagation", NeurIPS 2022 (bounds on the Clarke Jacobian from switching neurons).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from numeric.graph.crown import ROUNDING, LinearBounds, _pool_vjp, _unfold
from numeric.graph.tangent import gram_spectral_norm

__all__ = ["switching_jacobian_bound", "BallBounds"]

#: Relative widening of each computed norm (float64 rounding of the backward passes).
_WIDEN = 1e-9


def _spectral(matrix: torch.Tensor) -> float:
    """Certified-up-to-rounding spectral norm of one 2-d matrix (0 when empty)."""
    return gram_spectral_norm(matrix) * (1 + _WIDEN)


class _Switch:
    """One ReLU or max pool of one row: the input entries it reads where it can switch
    (``columns``, a flat index into its input), the output entries it can change
    (``rows``, flat into its output) and the bound ``norm`` on its change."""

    def __init__(self, state: LinearBounds, node) -> None:
        g = state.g
        self.node = node
        self.source = g.sources[node][0]
        low, high = state.lower[self.source], state.upper[self.source]
        if g.kind[node] == "relu":
            open_ = ~((low > 0) | (high < 0))
            self.columns = torch.nonzero(open_.reshape(-1)).reshape(-1)
            self.rows = self.columns
            self.norm = 1.0
            return
        kernel, stride, padding, dilation = g.pool[node]
        centre = g.values[self.source]
        self.select = _pool_vjp(centre, kernel, stride, padding, dilation)
        windows = _unfold(centre, kernel, stride, padding, dilation, -math.inf)  # (1,C,k,L)
        chosen = windows.argmax(dim=2, keepdim=True)
        low_w = _unfold(low, kernel, stride, padding, dilation, -math.inf)
        high_w = _unfold(high, kernel, stride, padding, dilation, -math.inf)
        others = high_w.scatter(2, chosen, -math.inf).amax(dim=2, keepdim=True)
        open_windows = ~(low_w.gather(2, chosen) > others)                     # (1,C,1,L)
        floor = low_w.amax(dim=2, keepdim=True)
        candidates = (high_w >= floor) & open_windows & torch.isfinite(high_w)
        candidates = candidates | (open_windows & (torch.arange(
            windows.shape[2], device=chosen.device).reshape(1, 1, -1, 1) == chosen))
        count = _fold(open_windows.expand_as(windows).to(centre.dtype), centre.shape,
                      kernel, stride, padding, dilation)
        reads = _fold(candidates.to(centre.dtype), centre.shape, kernel, stride, padding,
                      dilation)
        self.columns = torch.nonzero(reads.reshape(-1) > 0).reshape(-1)
        self.rows = torch.nonzero(open_windows.reshape(-1)).reshape(-1)
        self.norm = math.sqrt(2 * max(1.0, float(count.max())))


def _fold(windows, shape, kernel, stride, padding, dilation):
    """Sum (B, C, k, L) window entries back onto the (B, C, H, W) input (padding cut)."""
    b, c, h, w = shape
    size = (h + 2 * padding[0], w + 2 * padding[1])
    folded = F.fold(windows.reshape(b * c, windows.shape[2], windows.shape[3]), size,
                    kernel, dilation=dilation, stride=stride)
    folded = folded.reshape(b, c, *size)
    return folded[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def _pull(g, start, lam: torch.Tensor, switches: dict) -> tuple[dict, torch.Tensor]:
    """Backward pass of the centre's linearization from ``start`` with cotangents ``lam``
    (R, 1, *shape): the cotangent at every switch's output (R, entries), and at the
    input (R, d). ``switches`` maps each switch node to its :class:`_Switch`, which holds
    a max pool's selection at the centre."""
    position = g.order.index(start)
    pending = {start: lam}
    at_switch = {}
    for node in reversed(g.order[:position + 1]):
        lam = pending.pop(node, None)
        if lam is None:
            continue
        kind = g.kind[node]
        if kind == "input":
            return at_switch, lam.reshape(lam.shape[0], -1)
        if kind == "affine":
            for source, part in zip(g.sources[node], g.vjps[node](lam)):
                pending[source] = part if source not in pending else pending[source] + part
            continue
        if node in switches:
            at_switch[node] = lam.reshape(lam.shape[0], -1)
        source = g.sources[node][0]
        centre = g.values[source]
        if kind == "relu":
            pulled = lam * (centre > 0).to(lam.dtype)
        else:
            pulled = switches[node].select(lam)
        pending[source] = pulled if source not in pending else pending[source] + pulled
    return at_switch, torch.zeros(lam.shape[0], math.prod(g.values[g.order[0]].shape[1:]),
                                  dtype=lam.dtype, device=lam.device)


def _row_bound(traced, x: torch.Tensor, eps: torch.Tensor
               ) -> tuple[float, float, torch.Tensor]:
    state = LinearBounds(traced, x, eps)
    g = state.g
    margins = _margins(state)
    switches = {node: _Switch(state, node) for node in g.order
                if g.kind[node] in ("relu", "maxpool")}
    logits = g.values[g.output]
    classes = logits.shape[1]
    centring = torch.eye(classes, dtype=torch.float64, device=x.device) - 1.0 / classes
    at_switch, jacobian = _pull(g, g.output, centring.unsqueeze(1), switches)
    centre = _spectral(jacobian)
    beta: dict = {}
    total = 0.0
    for node, switch in switches.items():      # topological order
        if switch.columns.numel() == 0:
            beta[node] = 0.0
            continue
        shape = g.values[switch.source].shape
        lam = torch.zeros(switch.columns.numel(), math.prod(shape[1:]), dtype=torch.float64,
                          device=x.device)
        lam[torch.arange(switch.columns.numel(), device=x.device), switch.columns] = 1.0
        pulled, rows = _pull(g, switch.source, lam.reshape(-1, *shape), switches)
        spread = _spectral(rows)
        for earlier, matrix in pulled.items():
            if beta.get(earlier, 0.0) > 0:
                spread += _spectral(matrix[:, switches[earlier].rows]) * beta[earlier]
        beta[node] = switch.norm * spread * (1 + _WIDEN)
        if node in at_switch:
            total += _spectral(at_switch[node][:, switch.rows]) * beta[node]
    return centre, total * (1 + _WIDEN), margins


def _margins(state: LinearBounds) -> torch.Tensor:
    """Lower bounds of :math:`f_y - f_j` over the ball, ``y`` the centre's prediction
    (the label's own entry inf), as :func:`numeric.graph.crown.margin_lower_bounds`."""
    logits = state.g.values[state.g.output]
    classes = logits.shape[1]
    label = int(logits.argmax(dim=1))
    coefficients = -torch.eye(classes, dtype=torch.float64, device=logits.device)
    coefficients[:, label] += 1
    bound = state.backward(state.g.output, coefficients.unsqueeze(1))[:, 0]      # (K,)
    margins = logits[0, label] - logits[0]
    result = margins + bound - ROUNDING * margins.abs()
    result[label] = math.inf
    return result.cpu()


class BallBounds(NamedTuple):
    r"""``jacobian`` (B,): bounds on :math:`\sup\|CJ(x')\|_2` over each ball; ``margins``
    (B, K): lower bounds of :math:`f_y - f_j` over it, ``y`` the centre's prediction (its
    own column inf)."""

    jacobian: torch.Tensor
    margins: torch.Tensor


def switching_jacobian_bound(traced, x: torch.Tensor, eps) -> BallBounds:
    r"""Certified bounds over the balls :math:`\|x'-x_b\|_2 \le \varepsilon_b`: on the
    norm of the centred logits' Jacobian :math:`\|CJ(x')\|_2`, from the centre's exact
    Jacobian and what the ball can switch (module docstring), and on the margins of the
    centre's prediction (linear bound propagation); certified up to float64 rounding,
    widened for it.

    Parameters
    ----------
    traced : TracedGraph
        In the domain of :func:`numeric.graph.crown.supported_reason`.
    x : Tensor of shape (B, ...)
    eps : float or Tensor of shape (B,)

    Returns
    -------
    BallBounds, float64 on the CPU. Cost per row: the intervals of
    :class:`~numeric.graph.crown.LinearBounds`, then one backward pass at the centre per
    entry a switch can read and per class, and a spectral norm per pair of switches.
    """
    x = x.detach().to(torch.float64)
    eps = torch.as_tensor(eps, dtype=torch.float64).reshape(-1).expand(x.shape[0]).to(x.device)
    values, margins = [], []
    for row in range(x.shape[0]):
        centre, spread, margin = _row_bound(traced, x[row:row + 1], eps[row:row + 1])
        values.append((centre + spread) * (1 + _WIDEN))
        margins.append(margin)
    return BallBounds(torch.tensor(values, dtype=torch.float64), torch.stack(margins))
