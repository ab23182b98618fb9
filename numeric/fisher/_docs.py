"""Parameter text shared by the docstrings of the Fisher functions (one wording, one place;
filled in by :func:`theory.docstrings.fill_doc`, which loads no SymPy)."""

__all__ = ["MODEL_X", "DEVICE"]

#: The ``model`` and ``x`` parameters.
MODEL_X = """\
model : nn.Module
    Returns logits of shape (B, K); evaluated in eval mode (its mode is restored).
x : Tensor of shape (B, *S)
    A batch of inputs; moved to the computation device."""

#: The ``device`` parameter.
DEVICE = """\
device : str or torch.device, optional
    Where to compute: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
    (:func:`numeric.device.resolve_device`); default the model's device. Parameters
    and buffers are copied there for the call; the model is not moved."""
