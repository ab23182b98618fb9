r"""Matrix-free Jacobian products and the Fisher operator, batched over inputs.

Every estimator in :mod:`numeric.fisher` is built on one object, :class:`Linearization`:
the logits :math:`f(x_b)` of a model at a batch of inputs together with the two Jacobian
products :math:`J_b v_b` (JVP) and :math:`J_b^\top u_b` (VJP) for all rows ``b`` at once.

The softmax covariance :math:`\Sigma_p = \operatorname{diag}(p) - p p^\top` is applied
through the factor

.. math::

    A = \operatorname{diag}(s) - p s^\top, \qquad s = \sqrt{p}, \qquad A A^\top = \Sigma_p,

(because :math:`I - s s^\top` is a projection), so that

.. math::

    F = J^\top \Sigma_p J = W^\top W, \qquad W = A^\top J, \qquad
    W_k = \sqrt{p_k}\,\nabla_x \log p_k ,

and the nonzero eigenvalues of the :math:`d \times d` matrix :math:`F` are those of the
:math:`K \times K` matrix :math:`M = W W^\top = A^\top J J^\top A` (the paper's
:math:`\Lambda^{1/2} Q^\top Q \Lambda^{1/2}`). The iterative methods run on ``M`` so their
vectors have ``K`` entries, not ``d``; ``A`` needs no eigendecomposition.

Batching over inputs uses the model's own batch dimension: in eval mode the rows of a
batch do not interact, so one backward pass with a cotangent per row gives every row's
VJP. JVPs are computed as the derivative of the (linear) VJP map with respect to its
cotangent -- "JVP through a double VJP" -- on the graph of a single forward pass (made
under :func:`~numeric.fisher._autodiff.linearization_friendly`, which gives convolutions
and eval-mode batch norm cheap double backwards), and fall back to forward-mode AD
(:mod:`torch.autograd.forward_ad`) for models whose operations lack double backward. Both need the math attention kernel, which :func:`model_context` selects.
A :class:`Linearization` of ``x`` repeated ``c`` times along the batch gives ``c``
independent products per row in one pass, which the exact path and block Lanczos use to
keep the batch large enough for efficient kernels (:mod:`numeric.fisher.exact`,
:mod:`numeric.fisher.iterative`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from numeric.errors import InputError
from numeric.fisher._autodiff import linearization_friendly
from numeric.fisher._validation import (
    check_batch,
    check_logits,
    check_model,
    model_context,
    model_device_dtype,
    resolve_compute_device,
    resolve_dtype,
)
from numeric.fisher._docs import DEVICE, MODEL_X
from theory.docstrings import fill_doc

__all__ = ["Linearization", "fisher_vector_product", "apply_factor", "apply_factor_transpose",
           "softmax_complement_basis", "prepare"]


def apply_factor(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""``A u`` with :math:`A = \operatorname{diag}(\sqrt p) - p \sqrt p^\top`; shapes (B, K)."""
    s = p.sqrt()
    return s * u - p * (s * u).sum(dim=-1, keepdim=True)


def apply_factor_transpose(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""``A^T w`` with :math:`A = \operatorname{diag}(\sqrt p) - p \sqrt p^\top`; shapes (B, K)."""
    s = p.sqrt()
    return s * w - s * (p * w).sum(dim=-1, keepdim=True)


def apply_softmax_covariance(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r""":math:`\Sigma_p u = p \odot u - p (p^\top u)`; shapes (B, K)."""
    return p * u - p * (p * u).sum(dim=-1, keepdim=True)


class Linearization:
    r"""Logits of ``model`` at a batch ``x`` with batched Jacobian products.

    Construct it inside :func:`model_context` (the public estimators do). One forward pass
    is made with ``x`` requiring grad; its graph is kept for all later products.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of shape (B, *S) to logits of shape (B, K).
    x : Tensor of shape (B, *S)
        Already validated.
    dtype : torch.dtype
        Computation dtype; parameters and buffers are cast (and moved to ``device``) for
        the call only: the model itself is never modified.
    caller : str
        Name of the public function, used in error messages.
    device : torch.device, optional
        Where to compute (default: the model's device).

    Attributes
    ----------
    x : Tensor of shape (B, *S)
    logits, probabilities : Tensor of shape (B, K), detached
    batch, num_classes, num_features : int
        ``B``, ``K`` and ``d = prod(S)``.
    graph_bytes : int or None
        CUDA memory taken by the forward graph (None on other devices).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, *, dtype: torch.dtype,
                 caller: str, device: torch.device | None = None) -> None:
        self._caller = caller
        device = model_device_dtype(model, x)[0] if device is None else device
        tensors = {name: t.detach().to(device=device,
                                       dtype=dtype if t.is_floating_point() else t.dtype)
                   for name, t in (*model.named_parameters(), *model.named_buffers())}
        self._model, self._tensors = model, tensors
        self.x = x.detach().to(device=device, dtype=dtype).requires_grad_(True)
        self.batch = x.shape[0]
        self.num_features = x[0].numel()
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        with torch.enable_grad():
            try:
                self._logits = self._function(self.x)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError) as err:
                raise InputError(f"{caller}: the model failed on inputs of shape "
                                 f"{tuple(x.shape)} and dtype {dtype} on {device}: "
                                 f"{type(err).__name__}: {_first_line(err)}") from err
        self.graph_bytes = (None if before is None
                            else torch.cuda.memory_allocated(device) - before)
        check_logits(caller, self._logits, self.batch)
        self.logits = self._logits.detach()
        self.probabilities = torch.softmax(self.logits, dim=-1)
        self.num_classes = self.logits.shape[1]
        self._dual: tuple[torch.Tensor, torch.Tensor] | None = None
        self._forward_mode = False
        self._double_vjp_error: BaseException | None = None

    def _function(self, z: torch.Tensor, *, friendly: bool = True) -> torch.Tensor:
        """The model on ``z`` with the parameter copies; ``friendly``: convolutions and
        eval-mode batch norm with cheap double backwards (:mod:`numeric.fisher._autodiff`,
        whose custom functions have no forward-mode rule)."""
        with linearization_friendly() if friendly else contextlib.nullcontext():
            return torch.func.functional_call(self._model, self._tensors, (z,))

    def release(self) -> None:
        """Free the autograd graphs (the memory of the batch's activations); the detached
        ``logits`` and ``probabilities`` stay, the products are no longer available."""
        self._logits = self._logits.detach()
        self._dual = None

    @property
    def _depends_on_input(self) -> bool:
        return self._logits.requires_grad

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``J_b^T u_b`` for every row: (B, K) -> (B, *S). One backward pass."""
        if not self._depends_on_input:
            return torch.zeros_like(self.x)
        (grad,) = torch.autograd.grad(self._logits, self.x, u, retain_graph=True,
                                      allow_unused=True, materialize_grads=True)
        return grad

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J_b v_b`` for every row: (B, *S) -> (B, K). About one backward pass."""
        if not self._depends_on_input:
            return torch.zeros_like(self.logits)
        if not self._forward_mode:
            try:
                return self._double_vjp(v)
            except (RuntimeError, NotImplementedError) as err:
                self._forward_mode, self._dual, self._double_vjp_error = True, None, err
        try:
            return self._forward_jvp(v)
        except (RuntimeError, NotImplementedError) as err:
            raise InputError(
                f"{self._caller}: the model supports neither double backward "
                f"({_first_line(self._double_vjp_error)}) nor forward-mode AD "
                f"({_first_line(err)}).") from err

    def _double_vjp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` as the derivative of the linear map ``u -> J^T u`` along ``v``."""
        if self._dual is None:
            cotangent = torch.zeros_like(self.logits, requires_grad=True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(self._logits, self.x, cotangent,
                                              retain_graph=True, create_graph=True)
            if not grad.requires_grad:
                # J^T u is linear in u and the logits depend on x, so a graph that loses u
                # means a backward that is not differentiable (no_grad, once_differentiable)
                raise RuntimeError("the backward pass is not differentiable")
            self._dual = (cotangent, grad)
        cotangent, grad = self._dual
        (out,) = torch.autograd.grad(grad, cotangent, v, retain_graph=True)
        return out

    def _forward_jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` by forward-mode AD: one more forward pass with dual numbers."""
        import torch.autograd.forward_ad as forward_ad

        with forward_ad.dual_level(), torch.no_grad():
            out = self._function(forward_ad.make_dual(self.x.detach(), v), friendly=False)
            tangent = forward_ad.unpack_dual(out).tangent
        return torch.zeros_like(self.logits) if tangent is None else tangent

    def gram_product(self, u: torch.Tensor) -> torch.Tensor:
        r""":math:`M u = A^\top J J^\top A u` for every row: (B, K) -> (B, K).

        One VJP and one JVP. ``M`` has the nonzero spectrum of ``F``.
        """
        p = self.probabilities
        return apply_factor_transpose(p, self.jvp(self.vjp(apply_factor(p, u))))

    def fisher_product(self, v: torch.Tensor) -> torch.Tensor:
        r""":math:`F v = J^\top \Sigma_p J v` for every row: (B, *S) -> (B, *S)."""
        return self.vjp(apply_softmax_covariance(self.probabilities, self.jvp(v)))


def softmax_complement_basis(p: torch.Tensor) -> torch.Tensor:
    r"""Cotangents :math:`A u_j = s \odot u_j` for an orthonormal basis of :math:`s^\perp`.

    Returns a Tensor of shape (B, K-1, K); row ``j`` of batch entry ``b`` is
    :math:`s \odot (e_j - w\,w_j / (1 + s_{k^*}))` with :math:`w = s + e_{k^*}`, for the
    ``K - 1`` classes ``j != k^*`` in increasing order.
    """
    batch, classes = p.shape
    s = p.sqrt()
    rows, top = torch.arange(batch, device=p.device), p.argmax(dim=-1)
    w = s.clone()
    w[rows, top] += 1
    reflection = (torch.eye(classes, dtype=p.dtype, device=p.device)
                  - w.unsqueeze(-1) * w.unsqueeze(-2)
                  / (1 + s[rows, top]).view(batch, 1, 1))                 # (B, K, K)
    keep = torch.ones(batch, classes, dtype=torch.bool, device=p.device)
    keep[rows, top] = False
    columns = reflection.transpose(1, 2)[keep].reshape(batch, classes - 1, classes)
    return s.unsqueeze(1) * columns


def prepare(caller: str, model, x, dtype, device=None
            ) -> tuple[torch.Tensor, torch.dtype, torch.device]:
    """Validate ``model``, ``x``, ``dtype`` and ``device``; return ``x``, dtype, device."""
    check_model(caller, model)
    check_batch(caller, x)
    default = model_device_dtype(model, x)[1]
    return (x, resolve_dtype(caller, dtype, default),
            resolve_compute_device(caller, model, x, device))


@fill_doc(model_x=MODEL_X, device=DEVICE)
def fisher_vector_product(model: nn.Module, x: torch.Tensor, v: torch.Tensor, *,
                          dtype: torch.dtype | None = None,
                          device: str | torch.device | None = None) -> torch.Tensor:
    r"""Matrix-free input Fisher product :math:`F(x_b) v_b` for every row.

    .. math::

        F(x) v = J^\top (\operatorname{diag} p - p p^\top) J v,
        \qquad J = \partial f / \partial x, \quad p = \operatorname{softmax} f(x).

    Parameters
    ----------
    %(model_x)s
    v : Tensor of shape (B, *S)
        One direction per row.
    dtype : torch.dtype, optional
        Computation dtype (default: the model's); ``torch.float64`` casts a copy of the
        parameters for the call.
    %(device)s

    Returns
    -------
    Tensor of shape (B, *S)
        Exact up to rounding (no autocast or TF32, :func:`numeric.device.full_precision`),
        on the computation device, in the computation dtype.

    Raises
    ------
    InputError
        Bad shapes, non-finite inputs, a model returning probabilities, K = 1, or a device
        that is unknown or not available.

    Notes
    -----
    Cost: one forward pass, one backward pass with ``create_graph`` and two more backward
    passes (a JVP through a double VJP, then a VJP), all over the whole batch.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2).double()
    >>> x = torch.zeros(4, 3, dtype=torch.float64)
    >>> fisher_vector_product(model, x, torch.ones(4, 3, dtype=torch.float64)).shape
    torch.Size([4, 3])
    """
    caller = "fisher_vector_product"
    x, dtype, device = prepare(caller, model, x, dtype, device)
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        raise InputError(f"{caller}: expected v of the same shape as x {tuple(x.shape)}, "
                         f"got {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v)}.")
    if not torch.isfinite(v).all():
        raise InputError(f"{caller}: expected a finite v, got NaN or inf.")
    with model_context(model):
        lin = Linearization(model, x, dtype=dtype, caller=caller, device=device)
        return lin.fisher_product(v.to(device=device, dtype=dtype)).detach()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
