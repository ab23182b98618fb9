r"""Linear bound propagation (CROWN) of the logit margins over a Euclidean ball.

The region bounds of :mod:`numeric.graph.region` bound the *Jacobian* over a ball and
certify a radius through the mean value inequality. This module bounds the *values*
directly, as the verifiers of the field do (CROWN: Zhang et al., NeurIPS 2018; DeepPoly:
Singh et al., POPL 2019): every margin :math:`m_j = f_y - f_j` gets a linear lower bound

.. math::  m_j(x') - m_j(x) \;\ge\; a_j^\top (x' - x) + c_j
           \qquad \text{for every } \|x' - x\|_2 \le \varepsilon,

so :math:`\min_{B} m_j \ge m_j(x) + c_j - \varepsilon \|a_j\|_2` (Cauchy-Schwarz, attained
by :math:`x'-x = -\varepsilon a_j/\|a_j\|`). :math:`(a_j, c_j)` come from one backward
pass over the exported ATen graph, from the logits to the input, with every quantity
written as a deviation from its value at the centre :math:`x`:

- an *affine* operation :math:`v = g(u_1, \dots)` (convolution, linear layer, BatchNorm in
  eval mode, pooling by averages, sums, concatenation, data movement; affine in its
  input-dependent operands, at most one of them in any product) is exact:
  :math:`\Lambda^\top (v - v_0) = \sum_i (J_{g,i}^\top \Lambda)^\top (u_i - u_{i,0})`, the
  vector-Jacobian product at the centre (:func:`torch.func.vjp`, batched with
  :func:`torch.func.vmap`; for an affine map it is the same at every point);
- ReLU :math:`y = \max(u, 0)` with :math:`u \in [l, h]` is replaced by the triangle
  relaxation: exact where :math:`l \ge 0` or :math:`h \le 0`; otherwise
  :math:`\alpha u \le y \le h (u - l)/(h - l)` with :math:`\alpha = 1` if
  :math:`h > -l` else 0 (CROWN's adaptive lower slope). Positive coefficients take the
  lower line, negative ones the upper, and the lines' offsets from :math:`y_0` (both of
  sign making the bound weaker, never stronger) go into :math:`c`;
- 2-d max pooling: :math:`y \ge x_{i^*}` for :math:`i^*` the window's maximum at the centre
  (any entry is below the maximum); :math:`y \le x_{i^*}` too where the window is decided
  (:math:`l_{i^*} \ge h_j` for every other entry :math:`j`, so the maximum is
  :math:`x_{i^*}` over the whole ball), else :math:`y \le \max_j h_j`, a constant.

The intervals :math:`[l, h]` of the pre-activations come from the same backward pass run
from each activation's input (both signs, every entry) with the bounds of the activations
before it: CROWN's layer-by-layer back-substitution, :math:`\sum_k N_k \cdot (\text{size
of the graph before } k)` work per row. Intervals of a ReLU's output (a max-pool input)
follow from its input's exactly.

Domain: networks whose input-dependent operations are all affine (as above), ReLU or 2-d
max pooling (``ceil_mode`` off). Anything else (smooth activations, LayerNorm, attention,
products of two input-dependent tensors, modules kept whole) raises
:class:`~numeric.errors.UnsupportedModuleError` naming the operation; callers fall back to
the region and global certificates. The arithmetic is float64; every bound is widened by
:data:`ROUNDING` times the magnitude of the terms that make it (an allowance for float64
rounding, like every rounding allowance in the toolkit: an estimate, not a proof).

The bound is a certified lower bound on the margins over the whole ball (up to that
allowance): :func:`margin_lower_bounds`, and :func:`certified_radius_linear` bisects on the
radius.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx
from torch.func import vjp, vmap

from numeric.errors import UnsupportedModuleError
from numeric.graph.linearized import AffineGraph, supported_reason

__all__ = ["LinearBounds", "margin_lower_bounds", "certified_radius_linear", "ROUNDING",
           "supported_reason"]


#: Relative widening of every bound for float64 rounding (see the module docstring).
ROUNDING = 1e-10
#: Entries of the coefficient tensors processed at once (memory of one backward chunk).
CHUNK_ENTRIES = 1 << 23


class LinearBounds:
    """The state of one bound propagation: the graph and the pre-activation intervals."""

    def __init__(self, traced, x: torch.Tensor, eps: torch.Tensor, box=None,
                 previous: LinearBounds | None = None) -> None:
        self.g = AffineGraph(traced, x) if previous is None else previous.g
        self.eps = eps.to(torch.float64)
        self.box = None
        if box is not None:
            flat = x.reshape(x.shape[0], -1).to(torch.float64)
            self.box = ((box[0] - flat).clamp_max(0).unsqueeze(0),
                        (box[1] - flat).clamp_min(0).unsqueeze(0))
        self.previous = previous
        self.lower: dict = {}
        self.upper: dict = {}
        self._position = {node: i for i, node in enumerate(self.g.order)}
        for node in self.g.order:
            if self.g.kind[node] in ("relu", "maxpool"):
                self._interval(self.g.sources[node][0])

    # ------------------------------------------------------------------ intervals

    def _interval(self, node: fx.Node) -> None:
        """Bounds of every entry of ``node`` over the balls, from its own backward pass.

        With ``previous`` (intervals valid on balls containing these), only the entries
        whose interval there leaves the relaxation open are recomputed (a ReLU input that
        was stable stays stable on a smaller ball, and its relaxation is exact whatever
        its interval; a max-pool window reads the intervals of its nonzero entries): the
        rest keep the previous interval, and recomputed ones are intersected with it.
        """
        if node in self.lower:
            return
        value = self.g.values[node]
        if self.g.kind[node] == "relu":         # exact through a monotone map
            source = self.g.sources[node][0]
            self.lower[node] = self.lower[source].clamp_min(0)
            self.upper[node] = self.upper[source].clamp_min(0)
            return
        batch, shape = value.shape[0], value.shape[1:]
        count = math.prod(shape)
        centre = value.reshape(batch, count)
        lower = torch.full_like(centre, -math.inf)
        upper = torch.full_like(centre, math.inf)
        need = torch.ones_like(centre, dtype=torch.bool)
        previous = self.previous
        if previous is not None and node in previous.lower:
            lower = previous.lower[node].reshape(batch, count).clone()
            upper = previous.upper[node].reshape(batch, count).clone()
            if node in self.g.relu_inputs and node not in self.g.pool_sources:
                need = (lower < 0) & (upper > 0)
                if node in self.g.pooled_relu_inputs:
                    need = need | (upper > 0)
        width = int(need.sum(dim=1).max())
        order = torch.sort(need.to(torch.int8), dim=1, descending=True, stable=True).indices
        index = order[:, :width]                                              # (B, R)
        valid = need.gather(1, index)
        rows = max(1, CHUNK_ENTRIES // max(1, 2 * batch * self._widest(node)))
        for start in range(0, width, rows):
            chunk = index[:, start:start + rows]                              # (B, r)
            picks = torch.zeros(chunk.shape[1], batch, count, dtype=torch.float64,
                                device=value.device)
            picks.scatter_(2, chunk.T.unsqueeze(2), 1.0)
            coefficients = torch.cat([picks, -picks]).reshape(-1, batch, *shape)
            bound = self.backward(node, coefficients)                        # (2r, B)
            half = chunk.shape[1]
            at = centre.gather(1, chunk)
            ok = valid[:, start:start + rows]
            low = torch.maximum(lower.gather(1, chunk), at + bound[:half].T)
            high = torch.minimum(upper.gather(1, chunk), at - bound[half:].T)
            lower.scatter_(1, chunk, torch.where(ok, low, lower.gather(1, chunk)))
            upper.scatter_(1, chunk, torch.where(ok, high, upper.gather(1, chunk)))
        self.lower[node] = lower.reshape(value.shape)
        self.upper[node] = upper.reshape(value.shape)

    def _widest(self, node) -> int:
        position = self._position[node]
        return max(math.prod(self.g.values[n].shape[1:]) for n in self.g.order[:position + 1])

    # ------------------------------------------------------------------ backward

    def backward(self, start: fx.Node, coefficients: torch.Tensor) -> torch.Tensor:
        r"""Lower bounds of :math:`\Lambda_r^\top (v(x') - v(x))` over the balls, (R, B).

        ``coefficients`` has shape (R, B, *shape of ``start``).
        """
        g = self.g
        pending = {start: coefficients}
        constant = torch.zeros(coefficients.shape[:2], dtype=torch.float64,
                               device=coefficients.device)
        magnitude = torch.zeros_like(constant)
        for node in reversed(g.order[:self._position[start] + 1]):
            lam = pending.pop(node, None)
            if lam is None:
                continue
            kind = g.kind[node]
            if kind == "input":
                spread = self._concretize(lam.flatten(2))
                magnitude = magnitude + spread.abs()
                return constant + spread - ROUNDING * (magnitude + constant.abs())
            if kind == "affine":
                pulled = g.vjps[node](lam)
                for source, part in zip(g.sources[node], pulled):
                    pending[source] = part if source not in pending else pending[source] + part
                continue
            source = g.sources[node][0]
            if kind == "relu":
                lam, shift, size = self._relu(node, source, lam)
            else:
                lam, shift, size = self._maxpool(node, source, lam)
            constant = constant + shift
            magnitude = magnitude + size
            pending[source] = lam if source not in pending else pending[source] + lam
        raise UnsupportedModuleError("linear bounds: the logits do not depend on the input.")

    def _concretize(self, a: torch.Tensor) -> torch.Tensor:
        r""":math:`\min a^\top \delta` over :math:`\|\delta\| \le \varepsilon` (and the box), a
        lower bound for (R, B, d) coefficients, (R, B).

        Without a box: :math:`-\varepsilon\|a\|`. With one (:math:`l \le \delta \le h`,
        :math:`l \le 0 \le h`), weak Lagrangian duality: for every :math:`t > 0`,
        :math:`\min \ge \sum_i a_i\delta_i + (\|\delta\|^2 - \varepsilon^2)/(2t)` with
        :math:`\delta = \mathrm{clip}(-t a, l, h)` (the minimiser of the Lagrangian over the
        box), and the box alone gives :math:`\sum_i \min(a_i l_i, a_i h_i)`; every
        candidate is a valid bound, so the bisection on :math:`t` (to
        :math:`\|\delta\| = \varepsilon`) only decides how tight it is. The best of all is
        returned.
        """
        eps = self.eps.to(a.device).unsqueeze(0)
        norm = a.norm(dim=2)
        ball = -eps * norm
        if self.box is None:
            return ball
        low, high = self.box
        box_only = torch.minimum(a * low, a * high).sum(dim=2)
        scale = eps / norm.clamp_min(1e-300)
        t_low, t_high = scale, scale * 1e8
        for _ in range(40):
            t = torch.sqrt(t_low * t_high)
            step = torch.minimum(torch.maximum(-t.unsqueeze(2) * a, low), high)
            longer = step.norm(dim=2) > eps
            t_high = torch.where(longer, t, t_high)
            t_low = torch.where(longer, t_low, t)
        best = ball
        for t in (t_low, t_high):
            step = torch.minimum(torch.maximum(-t.unsqueeze(2) * a, low), high)
            dual = (a * step).sum(dim=2) + (step.pow(2).sum(dim=2) - eps ** 2) / (2 * t)
            best = torch.maximum(best, torch.nan_to_num(dual, nan=-math.inf))
        best = torch.maximum(best, box_only)
        return torch.where(norm > 0, best, torch.zeros_like(best))

    def _relu(self, node, source, lam):
        low, high = self.lower[source], self.upper[source]
        u0 = self.g.values[source]
        y0 = self.g.values[node]
        active = low >= 0
        unstable = (low < 0) & (high > 0)
        width = (high - low).where(unstable, torch.ones_like(high))
        upper_slope = torch.where(unstable, high / width, active.to(high.dtype))
        upper_offset = torch.where(unstable, -high * low / width, torch.zeros_like(high))
        lower_slope = torch.where(unstable, (high > -low).to(high.dtype),
                                  active.to(high.dtype))
        # offsets of the lines from the centre value: <= 0 below, >= 0 above
        below = lower_slope * u0 - y0
        above = upper_slope * u0 + upper_offset - y0
        positive, negative = lam.clamp_min(0), lam.clamp_max(0)
        pulled = positive * lower_slope + negative * upper_slope
        shift = (positive * below + negative * above).flatten(2).sum(dim=2)
        size = (lam.abs() * (u0.abs() + y0.abs() + upper_offset.abs())).flatten(2).sum(dim=2)
        return pulled, shift, size

    def _maxpool(self, node, source, lam):
        kernel, stride, padding, dilation = self.g.pool[node]
        u0 = self.g.values[source]
        low, high = self.lower[source], self.upper[source]
        y0 = self.g.values[node]
        windows = _unfold(u0, kernel, stride, padding, dilation, -math.inf)    # (B,C,k,L)
        chosen = windows.argmax(dim=2, keepdim=True)
        low_w = _unfold(low, kernel, stride, padding, dilation, -math.inf)
        high_w = _unfold(high, kernel, stride, padding, dilation, -math.inf)
        chosen_low = low_w.gather(2, chosen)
        others = high_w.scatter(2, chosen, -math.inf).amax(dim=2, keepdim=True)
        decided = (chosen_low >= others).squeeze(2).reshape(y0.shape)
        ceiling = high_w.amax(dim=2).reshape(y0.shape)
        # the selection of the centre's maximum (exactly the VJP of max pooling there)
        select = _pool_vjp(u0, kernel, stride, padding, dilation)
        positive = lam.clamp_min(0)
        negative = lam.clamp_max(0)
        kept = negative * decided.to(lam.dtype)
        dropped = negative - kept
        pulled = select(positive + kept)
        shift = (dropped * (ceiling - y0)).flatten(2).sum(dim=2)
        size = (dropped.abs() * (ceiling.abs() + y0.abs())).flatten(2).sum(dim=2)
        return pulled, shift, size


def _unfold(value, kernel, stride, padding, dilation, fill):
    """Windows of a (B, C, H, W) tensor as (B, C, k, L), padding filled with ``fill``
    (im2col copies entries, so infinite ones pass through)."""
    b, c = value.shape[:2]
    padded = F.pad(value, (padding[1], padding[1], padding[0], padding[0]), value=fill)
    windows = F.unfold(padded.reshape(b * c, 1, *padded.shape[2:]), kernel,
                       dilation=dilation, stride=stride)
    return windows.reshape(b, c, windows.shape[1], windows.shape[2])


def _pool_vjp(u0, kernel, stride, padding, dilation):
    def pool(value):
        return F.max_pool2d(value, kernel, stride, padding, dilation)
    with torch.enable_grad():
        _, pullback = vjp(pool, u0)
    batched = vmap(pullback)
    return lambda lam: batched(lam)[0]


# =========================================================================== public


def margin_lower_bounds(traced, x: torch.Tensor, eps, labels: torch.Tensor, *,
                        box=None) -> torch.Tensor:
    r"""Certified lower bounds of every margin over the balls (certified, up to rounding).

    Parameters
    ----------
    traced : TracedGraph
    x : Tensor of shape (B, ...)
    eps : float or Tensor of shape (B,)
        Radii in the input's Euclidean norm.
    labels : Tensor of shape (B,)
    box : (float, float), optional
        Bounds on every input entry (the data's range, the box the attacks search): the
        set is then the ball intersected with the box; without one, the whole ball.

    Returns
    -------
    Tensor of shape (B, K), float64
        Entry ``(b, j)`` is at most :math:`\min f_y(x') - f_j(x')` over the set; the
        label's own column is ``inf``.
    """
    return _margins(traced, x, eps, labels, box, None)[0]


def _margins(traced, x, eps, labels, box, previous):
    x = x.detach().to(torch.float64)
    eps = torch.as_tensor(eps, dtype=torch.float64).reshape(-1).expand(x.shape[0]).to(x.device)
    state = LinearBounds(traced, x, eps, box, previous)
    logits = state.g.values[state.g.output]
    batch, classes = logits.shape
    labels = labels.to(x.device).long()
    coefficients = -torch.eye(classes, dtype=torch.float64, device=x.device).unsqueeze(1).repeat(
        1, batch, 1)                                                    # (K, B, K)
    coefficients[:, torch.arange(batch), labels] += 1
    bound = state.backward(state.g.output, coefficients).T              # (B, K)
    margins = logits.gather(1, labels.unsqueeze(1)) - logits
    result = margins + bound - ROUNDING * margins.abs()
    result[torch.arange(batch), labels] = math.inf
    return result.cpu(), state


class _Anchor:
    """Intervals valid on each row's smallest ball found uncertified (reused below it)."""

    def __init__(self, g) -> None:
        self.g = g
        self.lower: dict = {}
        self.upper: dict = {}

    def take(self, state: LinearBounds, rows: torch.Tensor) -> None:
        for node, low in state.lower.items():
            high = state.upper[node]
            mask = rows.to(low.device).reshape(-1, *([1] * (low.dim() - 1)))
            old_low = self.lower.get(node, torch.full_like(low, -math.inf))
            old_high = self.upper.get(node, torch.full_like(high, math.inf))
            self.lower[node] = torch.where(mask, low, old_low)
            self.upper[node] = torch.where(mask, high, old_high)


def certified_radius_linear(traced, x: torch.Tensor, labels: torch.Tensor,
                            low: torch.Tensor, high: torch.Tensor, *, box=None,
                            steps: int = 8) -> torch.Tensor:
    """The largest radius in ``[low, high]`` at which every margin's linear lower bound
    stays positive (``high`` first, then bisection on a log scale; ``steps`` passes at
    most); ``low`` where none is.

    ``low`` must already be certified (0 is); the result is certified (up to rounding)
    for the ball (intersected with ``box`` when given). Every pass after the first
    recomputes only the intervals left open on the smallest ball found uncertified.
    """
    best = low.to(torch.float64).clone()
    high = torch.maximum(high.to(torch.float64), best)
    trial = high
    anchor = None
    for _ in range(steps):
        bounds, state = _margins(traced, x, trial, labels, box, anchor)
        ok = (bounds > 0).all(dim=1)
        if anchor is None:
            anchor = _Anchor(state.g)
        anchor.take(state, ~ok)
        best = torch.where(ok, torch.maximum(best, trial), best)
        high = torch.where(ok, high, torch.minimum(high, trial))
        open_ = high > best * (1 + 1e-3)
        if not bool(open_.any()):
            break
        trial = torch.where(best > 0, torch.sqrt(best * high), high / 16)
        trial = torch.where(open_, trial, best)
    return best
