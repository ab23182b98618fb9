r"""Certified maxima of a convolution symbol's norm over a finite set of frequencies.

A stride-1 correlation with kernel :math:`K_t` (:math:`a \times d` matrices, taps
:math:`t`) has the matrix symbol :math:`\hat K(\omega) = \sum_t K_t e^{-i\omega\cdot t}`;
the norm of the layer is bounded by the largest :math:`\|\hat K(\omega)\|_2` over a grid
(:func:`grid_frequencies`) or over the torus (:func:`torus_frequencies`, sampled).

Certification at one frequency
------------------------------
With the Gram kernel :math:`G_s = \sum_t K_{t+s}^\top K_t` (real :math:`d \times d`,
:math:`d \le a`, offsets :math:`s` in the difference set of the taps), the Hermitian matrix
:math:`H(\omega) = \hat K(\omega)^H \hat K(\omega) = \sum_s G_s e^{i\omega\cdot s}` costs
:math:`O(|s| d^2)` per frequency once the :math:`G_s` are known, and
:math:`\|\hat K(\omega)\|_2^2 \le \tau` is *proved* by a successful Cholesky factorisation
of :math:`\tau I - H(\omega)` (a symmetric positive definite test; Rump 2006). Rounding is
bounded explicitly:

* forming :math:`H`: entrywise :math:`|\tilde H - H| \le \beta\, A^\top A`,
  :math:`A = \sum_t |K_t|`, :math:`\beta = 1.5(\gamma_{n} + \gamma_{S} + \epsilon_\theta)`
  (:math:`n` the longest inner product of a :math:`G_s`, :math:`S` the number of offsets,
  :math:`\epsilon_\theta` the phase error), so :math:`\|\tilde H - H\|_2 \le \beta
  \|A\|_F^2`;
* the Cholesky factorisation: if it completes, :math:`\tilde R^H \tilde R = \tilde M +
  \Delta` with :math:`|\Delta| \le \tilde\gamma |\tilde R^H||\tilde R|` (Higham 2002,
  Thm 10.3; :math:`\tilde\gamma = \gamma_{8(d+2)}` covers complex arithmetic), hence
  :math:`\lambda_{\min}(\tilde M) \ge -\tilde\gamma\,\mathrm{tr}(\tilde M)/(1-\tilde\gamma)`;
* forming :math:`\tilde M = \tau I - \tilde H`: :math:`u(\tau + \max_i |\tilde h_{ii}|)`.

So :math:`\lambda_{\max}(H) \le \tau + \eta` with :math:`\eta` the sum of these (a relative
:math:`10^{-9}` at :math:`d = 512`). The threshold :math:`\tau` only ever rises, so earlier
certificates stay valid. It starts at :math:`(1 + \text{margin})` times Arnoldi (Lanczos
with full reorthogonalisation) Ritz values, which are lower bounds, at a few probe
frequencies; every frequency is then only tested, and a failing one is estimated (Arnoldi,
then a dense eigensolver if that was not enough) and the threshold raised to
:math:`(1 + \text{margin})` times its estimate. So the bound exceeds the exact maximum by
at most the factor :math:`\sqrt{1 + \text{margin}}` (:data:`ESTIMATE_SLACK`, or
:math:`10^{-9}` for :math:`d \le 48`), plus :math:`\eta`; only if even the eigensolver's
value failed (rounding at the margin's scale) does the threshold grow geometrically.

References
----------
S. M. Rump, "Verification of positive definiteness", BIT 46 (2006) 433-452.
N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from numeric.errors import ConvergenceError
from numeric.graph.norms.linear import UNIT_ROUNDOFF, gamma, power_of_two_scale

__all__ = ["certified_symbol_maximum", "grid_frequencies", "torus_frequencies",
           "torus_points", "ESTIMATE_SLACK"]

#: Relative margin (on :math:`\|\hat K\|^2`) between the best estimate and the threshold
#: every frequency is certified at: the bound exceeds the exact maximum over the
#: frequencies by at most a factor :math:`\sqrt{1 + 0.002} \approx 1.001` (plus rounding).
ESTIMATE_SLACK = 2e-3

#: Matrices at or below this size get their estimate from a dense eigensolver, accurate
#: to rounding, and are tested at this much smaller margin.
_SMALL = 48
_EXACT_SLACK = 1e-9

#: Arnoldi steps for one estimate.
_STEPS = 16

#: Matrices of the first chunk estimated before any test: those ranked highest by a few
#: power steps.
_PROBES = 4

#: Largest number of complex entries of one chunk of Hermitian matrices (64 MiB).
_CHUNK_ENTRIES = 2 ** 22

#: Rounds of test-estimate-raise on one chunk before giving up.
_MAX_ROUNDS = 60


@dataclass(frozen=True)
class _GramKernel:
    r"""The negated Gram kernel in symmetric form: :math:`-H(\omega) = \sum_{s \succeq 0}
    \cos(\omega\cdot s) P_s + i \sum_{s \succ 0} \sin(\omega\cdot s) Q_s` with
    :math:`P_0 = -G_0`, :math:`P_s = -(G_s + G_s^\top)`, :math:`Q_s = G_s^\top - G_s`."""

    cos_offsets: torch.Tensor    # (S+, D) float64: s = 0 and one of each pair +-s
    sin_offsets: torch.Tensor    # (S-, D) float64: the same without s = 0
    symmetric: torch.Tensor      # (groups, S+, d * d) float64, the P_s
    antisymmetric: torch.Tensor  # (groups, S-, d * d) float64, the Q_s
    size: int                    # d
    error: float                 # bound on ||H~ - H||_2 at every frequency (absolute)


def _offset_slices(s: int, k: int) -> tuple[slice, slice]:
    """Taps t + s and t, both inside [0, k)."""
    return slice(max(0, s), min(k, k + s)), slice(max(0, -s), min(k, k - s))


def _gram_kernel(kernel: torch.Tensor) -> _GramKernel:
    """The Gram kernel of each group of ``kernel`` (groups, a, d, *taps), d <= a."""
    groups, a, d = kernel.shape[:3]
    taps = kernel.shape[3:]
    dims = len(taps)
    positive = [s for s in itertools.product(*(range(-(k - 1), k) for k in taps))
                if s >= (0,) * dims]                     # s = 0 and one of each +-s pair
    symmetric, antisymmetric, inner = [], [], 1
    # tap-major layout: every K_t is a contiguous (a, d) block, so G_s is accumulated by
    # in-place batched GEMMs without gathering slices (fresh large copies page-fault)
    blocks = kernel.permute(0, *range(3, 3 + dims), 1, 2).contiguous()
    for s in positive:
        later, earlier = zip(*(_offset_slices(sd, k) for sd, k in zip(s, taps)))
        product = kernel.new_zeros(groups, d, d)
        count = 0
        for t in itertools.product(*(range(sl.start, sl.stop) for sl in earlier)):
            shifted = tuple(td + sd for td, sd in zip(t, s))
            product.baddbmm_(blocks[(slice(None), *shifted)].mT, blocks[(slice(None), *t)])
            count += 1
        inner = max(inner, (a + 1) * count)
        if any(s):                                       # product = G_s
            symmetric.append(-(product + product.mT))
            antisymmetric.append(product.mT - product)
        else:
            symmetric.append(-product)
    offsets = torch.tensor(positive, dtype=torch.float64).reshape(len(positive), dims)
    count = 2 * len(positive) - 1                        # offsets in H's sum
    mass = float(kernel.abs().sum(dim=tuple(range(3, 3 + dims))).pow(2).sum(dim=(1, 2))
                 .max()) * 1.01                          # ||sum_t |K_t| ||_F^2, rounded up
    phase = (gamma(dims + 3) * 2 * math.pi * float(offsets.abs().sum(dim=1).max())
             + 4 * UNIT_ROUNDOFF)
    beta = 1.5 * (gamma(inner + 1) + gamma(count) + phase)
    underflow = 8.0 * d * (inner + count) * 2.0 ** -1074
    flat = d * d
    return _GramKernel(
        offsets, offsets[1:],
        torch.stack(symmetric, dim=1).reshape(groups, len(symmetric), flat),
        torch.stack(antisymmetric, dim=1).reshape(groups, len(antisymmetric), flat)
        if antisymmetric else kernel.new_zeros(groups, 0, flat),
        d, beta * mass + underflow)


class _Workspace:
    """Buffers reused by every chunk: fresh allocations above glibc's mmap threshold
    (32 MiB) page-fault on every call, which costs as much as the arithmetic."""

    def __init__(self, gram: _GramKernel, groups: int, chunk: int) -> None:
        entries = groups * chunk * gram.size ** 2
        self.gram, self.groups = gram, groups
        self.real = torch.empty(entries, dtype=torch.float64)
        self.imag = torch.empty(entries, dtype=torch.float64)
        self.matrix = torch.empty(entries, dtype=torch.complex128)
        self.factor = torch.empty(entries, dtype=torch.complex128)

    def negated(self, frequencies: torch.Tensor) -> torch.Tensor:
        """:math:`-\\tilde H(\\omega)` for every group and frequency: (groups * F, d, d)."""
        gram, d = self.gram, self.gram.size
        shape = (self.groups, frequencies.shape[0], d * d)
        count = math.prod(shape)
        real, imag = self.real[:count].view(shape), self.imag[:count].view(shape)
        torch.matmul(torch.cos(frequencies @ gram.cos_offsets.T), gram.symmetric, out=real)
        if gram.antisymmetric.shape[1]:
            torch.matmul(torch.sin(frequencies @ gram.sin_offsets.T), gram.antisymmetric,
                         out=imag)
        else:
            imag.zero_()
        matrix = self.matrix[:count].view(shape)
        torch.complex(real, imag, out=matrix)
        return matrix.view(-1, d, d)

    def passes(self, shifted: torch.Tensor) -> torch.Tensor:
        """Whether the Cholesky factorisation of each matrix completes."""
        factor = self.factor[:shifted.numel()].view(shifted.shape)
        info = torch.empty(shifted.shape[0], dtype=torch.int32)
        torch.linalg.cholesky_ex(shifted, out=(factor, info))
        return info == 0


def _rough_estimates(negated: torch.Tensor, generator: torch.Generator,
                     steps: int = 4) -> torch.Tensor:
    """Rayleigh quotients after a few power steps (complex64): only to rank matrices."""
    matrices = negated.to(torch.complex64)
    vector = torch.randn(matrices.shape[0], matrices.shape[-1], 1, generator=generator
                         ).to(torch.complex64)
    for _ in range(steps):
        vector = matrices @ (vector / vector.norm(dim=1, keepdim=True))
    # -H is negative semidefinite, so the power steps converge to its lowest eigenvalue
    return vector.norm(dim=1).reshape(-1).to(torch.float64)


def _estimates(negated: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Lower estimates of :math:`\\lambda_{\\max}(H)` from :math:`-H` (Ritz values)."""
    d = negated.shape[-1]
    if d <= _SMALL:
        return -torch.linalg.eigvalsh(negated)[:, 0]
    matrices = negated.to(torch.complex64).neg_()
    batch, steps = matrices.shape[0], min(_STEPS, d)
    start = torch.randn(batch, d, 1, generator=generator, dtype=torch.float32)
    vector = (start / start.norm(dim=1, keepdim=True)).to(torch.complex64)
    basis, images = [], []
    for _ in range(steps):
        basis.append(vector)
        image = matrices @ vector
        images.append(image)
        residual = image
        for _ in range(2):                                        # reorthogonalise twice
            stacked = torch.cat(basis, dim=-1)
            residual = residual - stacked @ (stacked.mH @ residual)
        norm = residual.norm(dim=1, keepdim=True)
        fresh = torch.randn(batch, d, 1, generator=generator).to(torch.complex64)
        vector = torch.where(norm > 1e-5 * image.norm(dim=1, keepdim=True),
                             residual / norm.clamp_min(1e-30),
                             fresh / fresh.norm(dim=1, keepdim=True))
    projected = torch.cat(basis, dim=-1).mH @ torch.cat(images, dim=-1)
    projected = 0.5 * (projected + projected.mH)
    return torch.linalg.eigvalsh(projected)[:, -1].to(torch.float64)


def _certify_chunk(workspace: _Workspace, negated: torch.Tensor, threshold: float,
                   first: bool, generator: torch.Generator) -> tuple[float, int]:
    """Raise ``threshold`` until ``threshold * I - H`` passes the Cholesky test for every
    matrix of the chunk; return it and the number of diagonal shifts (for the rounding
    bound). ``negated`` holds :math:`-H` and is shifted in place; on the ``first`` chunk the
    threshold starts from estimates at the few matrices that power steps rank highest."""
    margin = _EXACT_SLACK if negated.shape[-1] <= _SMALL else ESTIMATE_SLACK
    if first:
        probes = negated if negated.shape[-1] <= _SMALL else \
            negated[_rough_estimates(negated, generator).argsort(descending=True)[:_PROBES]]
        threshold = max(threshold, float(_estimates(probes, generator).max()) * (1 + margin))
    negated.diagonal(dim1=-2, dim2=-1).real.add_(threshold)
    failed = torch.nonzero(~workspace.passes(negated)).reshape(-1)
    pending = negated[failed]
    for round_ in range(1, _MAX_ROUNDS + 1):
        if pending.shape[0] == 0:
            return threshold, round_
        unshifted = pending.clone()
        unshifted.diagonal(dim1=-2, dim2=-1).real.sub_(threshold)
        if round_ == 1:                  # Arnoldi first, a dense eigensolver if that was low
            estimate = float(_estimates(unshifted, generator).max())
        else:
            estimate = float(-torch.linalg.eigvalsh(unshifted)[:, 0].max())
        # geometric growth only past the eigensolver (rounding at the margin's scale)
        growth = 1 + margin * 4 ** (round_ - 2) if round_ > 2 else 1.0
        raised = max(estimate * (1 + margin), threshold * growth)
        pending.diagonal(dim1=-2, dim2=-1).real.add_(raised - threshold)
        threshold = raised
        pending = pending[~workspace.passes(pending)]
    raise ConvergenceError(f"certified_symbol_maximum: expected a threshold that passes "
                           f"the Cholesky test within {_MAX_ROUNDS} rounds, got "
                           f"{threshold:.6g} still failing.", iterations=_MAX_ROUNDS)


def _spread_order(count: int, first: int) -> torch.Tensor:
    """A permutation of range(count) whose first ``first`` entries are spread evenly."""
    if count <= first:
        return torch.arange(count)
    head = torch.linspace(0, count - 1, first).round().long().unique()
    mask = torch.ones(count, dtype=torch.bool)
    mask[head] = False
    return torch.cat([head, torch.arange(count)[mask]])


def _scale(kernel: torch.Tensor) -> tuple[torch.Tensor, int, float]:
    """``kernel * 2**-e`` with its largest entry in [1/2, 1), ``e``, and a bound on the norm
    of what the scaling lost: exact unless entries underflow, each by < 2**-1075 (scaled),
    and a kernel E with entries below x has symbol norms <= sum_t ||E_t|| <= |t| sqrt(ad) x.
    Weights within 2**+-400 are left alone (their squares stay far from overflow, and the
    Gram kernel's absolute term bounds underflow)."""
    exponent = int(torch.frexp(kernel.abs().max()).exponent)
    if abs(exponent) <= 400:
        return kernel, 0, 0.0
    power = torch.tensor(exponent)
    scaled = power_of_two_scale(kernel, -power)
    if torch.equal(power_of_two_scale(scaled, power), kernel):
        return scaled, exponent, 0.0
    taps = math.prod(kernel.shape[3:])
    return scaled, exponent, math.ldexp(taps * math.sqrt(kernel.shape[1] * kernel.shape[2]),
                                        exponent - 1074)


def certified_symbol_maximum(kernel: torch.Tensor, frequencies: torch.Tensor) -> float:
    r"""Certified upper bound on :math:`\max_{g, j} \|\hat K_g(\omega_j)\|_2`.

    Parameters
    ----------
    kernel : Tensor of shape (groups, c_out, c_in, *taps), float64, finite
        One stride-1 correlation kernel per group.
    frequencies : Tensor of shape (F, D), float64
        The frequencies :math:`\omega_j` (radians).

    Returns
    -------
    float
        A certified bound (module docstring: explicit rounding, not yet multiplied by
        ``CERTIFICATION_FACTOR``), at most about :math:`\sqrt{1 + }`
        :data:`ESTIMATE_SLACK` above the exact maximum. Cost: :math:`O(a d^2 |t|^2 / 2)`
        for the Gram kernel, then per frequency and group :math:`O(|s| d^2)` to form
        :math:`H` and one :math:`d \times d` complex Cholesky factorisation
        (:math:`d^3/3`), plus a few power steps on the first chunk and Arnoldi estimates
        on a few probes and on failures.
    """
    if kernel.numel() == 0 or not bool(kernel.any()):
        return 0.0
    if kernel.shape[2] > kernel.shape[1]:
        kernel = kernel.transpose(1, 2)      # ||K^(w)|| = ||K^(w)^T||: use the smaller Gram
    scaled, exponent, lost = _scale(kernel)
    gram = _gram_kernel(scaled)
    groups, d = scaled.shape[0], gram.size
    chunk = min(frequencies.shape[0], max(1, _CHUNK_ENTRIES // (groups * d * d)))
    workspace = _Workspace(gram, groups, chunk)
    order = _spread_order(frequencies.shape[0], chunk)
    generator = torch.Generator().manual_seed(0)
    threshold, diagonal, shifts = 0.0, 0.0, 1
    for start in range(0, len(order), chunk):
        negated = workspace.negated(frequencies[order[start:start + chunk]])
        diagonal = max(diagonal, float(negated.diagonal(dim1=-2, dim2=-1).real.abs().max()))
        threshold, rounds = _certify_chunk(workspace, negated, threshold, start == 0,
                                           generator)
        shifts = max(shifts, rounds)
    u = UNIT_ROUNDOFF
    cholesky = gamma(8 * (d + 2))
    slack = (cholesky / (1 - cholesky) * d * (1 + 2 * u) + 2 * (shifts + 1) * u) * \
        (threshold + diagonal)
    bound = math.sqrt((threshold + slack + gram.error) * (1 + 4 * u)) * (1 + 2 * u)
    return math.ldexp(bound, exponent) + lost * (1 + 2 * u) + 2.0 ** -1074


def _canonical(indices: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Keep one of each pair :math:`\\{j, -j \\bmod N\\}` (a real kernel has
    :math:`\\hat K(-\\omega) = \\overline{\\hat K(\\omega)}`, the same norm)."""
    size = torch.tensor(list(sizes), dtype=torch.long)
    negated = (-indices) % size
    weights = torch.tensor([math.prod(sizes[i + 1:]) for i in range(len(sizes))])
    return indices[(indices * weights).sum(1) <= (negated * weights).sum(1)]


def grid_frequencies(sizes: Sequence[int]) -> torch.Tensor:
    """The DFT frequencies :math:`2\\pi j / N` of a grid, one of each conjugate pair.

    >>> grid_frequencies([4]).reshape(-1).tolist() == [0.0, math.pi / 2, math.pi]
    True
    """
    indices = torch.cartesian_prod(*(torch.arange(n) for n in sizes)).reshape(-1, len(sizes))
    kept = _canonical(indices, sizes)
    return 2 * math.pi * kept.double() / torch.tensor(list(sizes), dtype=torch.float64)


def torus_points(reaches: Sequence[float], radius: float) -> tuple[list[int], float]:
    r"""Lattice sizes :math:`M_d` that cover the torus within weighted radius ``radius``.

    ``reaches`` are :math:`c_d = (k_d - 1)/2`; the weighted distance is
    :math:`\sum_d c_d |\delta_d|`. With two or more active dimensions the lattice is a
    checkerboard (points with even index sum, :math:`M_d` even), which has the covering
    radius :math:`\sum_d c_d\pi/M_d` of the full grid with half its points; with one it is
    the full grid, radius :math:`c\pi/M`. Returns the sizes and the exact covering radius.
    """
    active = [c for c in reaches if c > 0]
    if not active:
        return [1] * len(reaches), 0.0
    if len(active) == 1:
        sizes = [max(2, math.ceil(c * math.pi / radius)) if c > 0 else 1 for c in reaches]
    else:
        sizes = [2 * max(1, math.ceil(len(active) * c * math.pi / (2 * radius))) if c > 0
                 else 1 for c in reaches]
    return sizes, sum(c * math.pi / m for c, m in zip(reaches, sizes))


def torus_frequencies(reaches: Sequence[float], radius: float,
                      ) -> tuple[torch.Tensor, float]:
    """The points of :func:`torus_points`' lattice (one of each conjugate pair) and its
    covering radius :math:`\\sigma`."""
    sizes, sigma = torus_points(reaches, radius)
    indices = torch.cartesian_prod(*(torch.arange(m) for m in sizes)).reshape(-1, len(sizes))
    if sum(1 for c in reaches if c > 0) >= 2:
        indices = indices[indices.sum(1) % 2 == 0]
    kept = _canonical(indices, sizes)
    return 2 * math.pi * kept.double() / torch.tensor(sizes, dtype=torch.float64), sigma
