"""Certified radii of a traced model: the region certificate (the margin gradients
integrated over growing balls), the global one, and linear bound propagation of the
margins (:mod:`numeric.graph.crown`), each checked at random points of its set.

:class:`CertifiedRadii` is the part of :class:`~numeric.graph.bound.TracedModel` that
turns bounds into radii; it uses the model's trace (``_traced``), its region passes and
its Lipschitz constant, and keeps the bounds themselves in :mod:`numeric.graph.bound`.
"""

from __future__ import annotations

import math

import torch

from numeric.errors import UnsoundBoundError, UnsupportedModuleError
from numeric.graph import crown
from numeric.graph.region import region_pass
from numeric.graph.selfcheck import SELF_CHECK_ROWS

__all__ = ["CertifiedRadii"]

#: Relative allowance for float64 rounding of the logits at a point (of the largest one).
MARGIN_ROUNDING = 1e-10
#: Above this, ``exp`` overflows in float64 (``log`` of the largest double).
_EXP_OVERFLOW = math.log(torch.finfo(torch.float64).max)
#: ``linear_reason`` not yet found.
_UNCHECKED = object()


class CertifiedRadii:
    """Certified radii of :class:`~numeric.graph.bound.TracedModel` (a mixin)."""

    def certified_radius(self, x: torch.Tensor, labels: torch.Tensor | None = None, *,
                         steps: int = 16, linear_steps: int = 8, box=None,
                         upper: torch.Tensor | None = None) -> torch.Tensor:
        r"""The largest radius within which the prediction provably does not change.

        Along any segment from :math:`x` of length :math:`r`, each class margin
        :math:`m_j = f_y - f_j` changes by at most :math:`\int_0^r G_j(t)\,dt`, where
        :math:`G_j(t) \ge \sup_{\|x'-x\| \le t}\|\nabla m_j(x')\|` is the region bound
        (:mod:`numeric.graph.region`; Clarke's mean value theorem on the segment). With
        :math:`G_j` non-decreasing, the upper Riemann sum over radii
        :math:`t_1 < \dots < t_n` bounds the integral, so the largest :math:`t_k` with
        :math:`m_j(x) > \sum_{i \le k}(t_i - t_{i-1})\,G_j(t_i)` for every :math:`j \ne y`
        is certified: near :math:`x` the exact gradient counts, not the worst case over the
        whole ball. The result is never below the global certificate
        :math:`\min_j m_j / (\sqrt2 L)` (:math:`L` of the centred logits: every gradient of
        a margin is at most :math:`\sqrt 2 L` everywhere), which also holds. The grid is
        geometric, from :math:`2^{-12}` to twice the first-order radius
        :math:`\min_j m_j / G_j(0)`, ``steps`` points per factor 256.

        Where the network is affine, ReLU and 2-d max pooling throughout, linear bound
        propagation of the margins (:mod:`numeric.graph.crown`; CROWN) certifies a radius
        too, usually far larger: it bounds the margins' values over the ball instead of
        their gradients. It bisects (``linear_steps`` passes) between the radius above and
        ``upper`` (default twice the first-order radius), and the larger radius is
        returned. With ``box``, the set is the ball intersected with the box (the data's
        range: the set the attacks search); the region and global certificates hold on the
        whole ball, so on the intersection too. When ``self_check``, the prediction is
        verified at a random point of each certified set (the first rows).

        Parameters
        ----------
        x : Tensor of shape (B, ...)
        labels : Tensor of shape (B,), optional
            The classes to certify (default: the predictions); a row whose prediction
            differs from its label gets 0.
        steps : int, default 16
            Grid points per factor 256 of radius (one region pass over the batch each;
            about ``1.6 steps`` in all).
        linear_steps : int, default 8
            Passes of linear bound propagation (0: none). Each costs about
            :math:`\sum_k 2N_k \cdot S_k` multiply-adds per row (:math:`N_k` entries of
            the k-th activation's input, :math:`S_k` the size of the graph before it);
            about 0.5 s per row and pass for the demo's VGG, 1.5-2 s for its ResNet, on 2 cores.
            Networks outside its domain, or above :data:`numeric.graph.linearized.WORK_LIMIT`,
            skip it.
        box : (float, float), optional
            The range of every input entry.
        upper : Tensor of shape (B,), optional
            A radius known not to be certifiable (an attack's), the top of the bisection.

        Returns
        -------
        Tensor of shape (B,), float64
            Certified radii in the input's Euclidean norm; never above the distance to
            the nearest input with another prediction.
        """
        x, _ = self._region_arguments("certified_radius", x, 0.0)
        self._refuse_jumps("certified_radius")
        margins, predicted = self.certified_margins(x, labels)
        labels = predicted if labels is None else labels.to("cpu").long()
        others = torch.arange(margins.shape[1]) != labels.unsqueeze(1)
        correct = (predicted == labels) & (margins.masked_fill(~others, math.inf).amin(1) > 0)

        shared = self._tangents_at(x)    # the centres' exact tangents, in every pass

        def gradients(eps: torch.Tensor) -> torch.Tensor:
            result = region_pass(self._traced, self._fisher_overrides(), x, eps,
                                 tangent_cache=shared)
            values = result.margin_gradients.cpu().clone()
            values[torch.arange(len(labels)), labels] = 0
            return values

        first = gradients(torch.zeros(len(labels), dtype=torch.float64))
        first_order = torch.where(others, margins / first.clamp_min(1e-300),
                                  torch.full_like(margins, math.inf)).amin(dim=1)
        span = torch.where(correct & torch.isfinite(first_order), 2 * first_order,
                           torch.zeros_like(first_order))
        radius = torch.zeros(len(labels), dtype=torch.float64)
        spent = torch.zeros_like(margins)
        previous = torch.zeros(len(labels), dtype=torch.float64)
        alive = span > 0
        ratio = 2.0 ** (8.0 / steps)            # `steps` points per factor 256
        t = span * 2.0 ** -12
        for _ in range(int(math.ceil(steps * 13 / 8)) + 1):
            if not bool(alive.any()):
                break
            t = torch.where(alive, t, previous)
            spent = spent + (t - previous).unsqueeze(1) * gradients(t)
            ok = alive & ((spent < margins) | ~others).all(dim=1)
            radius = torch.where(ok, t, radius)
            alive, previous = ok, t
            t = t * ratio
        # the global certificate holds too (every margin gradient is at most sqrt(2) L,
        # L of the centred logits, everywhere): the better of the two
        steepest = math.sqrt(2.0) * self._lipschitz_value(centred=True)
        if math.isfinite(steepest) and steepest > 0:
            floor = margins.masked_fill(~others, math.inf).amin(1) / (steepest * (1 + 1e-12))
            radius = torch.maximum(radius, floor)
        radius = torch.where(correct, radius, torch.zeros_like(radius))
        if linear_steps > 0 and self.linear_reason(x) is None:
            top = 2 * first_order if upper is None else torch.as_tensor(
                upper, dtype=torch.float64).reshape(-1).cpu()
            radius = self.linear_radius(x, labels, radius,
                                        torch.where(torch.isfinite(top), top, 2 * first_order),
                                        box=box, steps=linear_steps, self_check=False)
        if self.self_check:
            self._check_radius(x, labels, radius, correct, box)
        return radius

    def linear_radius(self, x: torch.Tensor, labels: torch.Tensor, low: torch.Tensor,
                      upper: torch.Tensor, *, box=None, steps: int = 8,
                      self_check: bool | None = None) -> torch.Tensor:
        """The certified radius of linear bound propagation, bisected in ``[low, upper]``
        (``low`` already certified; rows with ``low = 0`` and a non-positive margin keep
        0); see :meth:`certified_radius`. Models outside its domain return ``low``."""
        low = torch.as_tensor(low, dtype=torch.float64).reshape(-1).cpu().clone()
        upper = torch.as_tensor(upper, dtype=torch.float64).reshape(-1).cpu()
        labels = labels.to("cpu").long()
        rows = torch.nonzero(torch.isfinite(upper) & (upper > low)).reshape(-1)
        if self.linear_reason(x) is None and len(rows):
            linear = crown.certified_radius_linear(
                self._traced, x[rows.to(x.device)], labels[rows], low[rows], upper[rows],
                box=box, steps=steps)
            low[rows] = torch.maximum(low[rows], linear)
        if self.self_check if self_check is None else self_check:
            self._check_radius(x, labels, low, low > 0, box)
        return low

    def certified_margins(self, x: torch.Tensor, labels: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Lower bounds of the margins :math:`f_y(x) - f_j(x)` at the points themselves,
        and the predictions, from the float64 copy of the model (the function every bound
        is about; a float32 or half model's own logits round differently).

        The float64 logits are lowered by :data:`MARGIN_ROUNDING` times each row's largest
        logit (an allowance for float64 rounding, like the toolkit's others: an estimate,
        not a proof). Returns ``(margins, predicted)``: (B, K) float64 with the label's
        column 0 (labels default to the float64 predictions), and (B,).
        """
        with torch.no_grad():
            logits = self._reference()(x.detach().to(self._example.device, torch.float64))
        logits = logits.detach().to(torch.float64).cpu()
        predicted = logits.argmax(dim=1)
        labels = predicted if labels is None else labels.to("cpu").long()
        slack = MARGIN_ROUNDING * logits.abs().amax(dim=1, keepdim=True)
        margins = logits.gather(1, labels.unsqueeze(1)) - logits - 2 * slack
        margins[torch.arange(len(labels)), labels] = 0.0
        return margins, predicted

    def radius_reason(self) -> str | None:
        """None when the model's value is continuous in its input (every radius
        certificate integrates derivative bounds, which cannot see a jump), else the
        first jump found, in words."""
        for key, data in self._traced.G.nodes(data=True):
            if data.get("op") == "softplus":
                params = data.get("params", {})
                beta, threshold = params.get("beta", 1.0), params.get("threshold", 20.0)
                if threshold > _EXP_OVERFLOW:
                    # log1p(exp(beta*x)) is inf in float64 between the two: no jump at
                    # the threshold, but a jump to infinity before it
                    return (f"softplus (node {key!r}) overflows to inf where beta*x is "
                            f"between {_EXP_OVERFLOW:.2f} and threshold={threshold:g}, and "
                            f"a radius from derivative bounds cannot see a jump")
                jump = math.log1p(math.exp(-threshold)) / beta
                return (f"softplus (node {key!r}) jumps by {jump:.3g} where beta*x "
                        f"crosses threshold={threshold:g} (torch switches to the identity "
                        f"there), and a radius from derivative bounds cannot see a jump")
        return None

    def _refuse_jumps(self, caller: str) -> None:
        reason = self.radius_reason()
        if reason is not None:
            raise UnsupportedModuleError(f"{caller}: no certified radius: {reason}.")

    def linear_reason(self, x: torch.Tensor) -> str | None:
        """None when linear bound propagation (:mod:`numeric.graph.crown`) covers this
        model, else the reason it does not (one line; the graph's structure decides, so
        it is found once)."""
        if self._linear_reason is _UNCHECKED:
            self._linear_reason = crown.supported_reason(self._traced, x)
        return self._linear_reason

    def _check_radius(self, x, labels, radius, correct, box) -> None:
        """The prediction at a random point of each certified set (the first rows)."""
        rows = x[:SELF_CHECK_ROWS].detach().to(torch.float64).cpu()
        count = rows.shape[0]
        generator = torch.Generator().manual_seed(1)
        direction = torch.randn(rows.shape, generator=generator, dtype=torch.float64)
        norms = direction.reshape(count, -1).norm(dim=1).reshape(-1, *([1] * (rows.dim() - 1)))
        reach = radius[:count].clamp_max(1e300).reshape(-1, *([1] * (rows.dim() - 1)))
        points = rows + reach * direction / norms
        if box is not None:
            points = points.clamp(*box)
        with torch.no_grad():
            predicted = self._reference()(points.to(self._example.device)).argmax(dim=1).cpu()
        bad = correct[:count] & (predicted != labels[:count]) & torch.isfinite(radius[:count])
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0])
            raise UnsoundBoundError(
                f"certified_radius: the prediction changes at distance "
                f"{float(radius[row]):.6g} from row {row}, inside its certified radius; "
                f"this is a bug in fimbound. {self._detail()}")
