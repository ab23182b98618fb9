r"""Provenance of entries: which row of the batch each entry of a tensor depends on.

The input Fisher information is a per-sample quantity: output row :math:`b` must depend on
input row :math:`b` alone. The tracer proves it for the model's actual graph by carrying,
next to every input-dependent tensor, its *rows*: an integer tensor of the same shape whose
entry is the row of the batch that the entry depends on, or :math:`-1` for an entry that
does not depend on the input (a class token, a constant fill). Every operation updates it
exactly:

- a data movement (view, permutation, indexing, padding, concatenation) is replayed on
  encoded entries (:func:`replay_movement`), which also proves that it *is* a movement
  (every output entry a copy of one input entry or a constant) and counts copies;
- an operation that combines entries along some dimensions (a linear layer, a
  convolution, a reduction, a softmax) needs the rows constant along them
  (:func:`map_rows`);
- an elementwise operation of several operands needs them to agree entrywise
  (:func:`combine_rows`);
- the output must give row :math:`b` of the logits from row :math:`b` of the input
  (:func:`check_output_rows`).

An operation that would combine two rows (a reduction over the batch, BatchNorm with batch
statistics, a roll along the batch followed by an addition) is refused where it happens.
Rows in the standard layout (dimension 0 is the batch, every entry depends on its row) are
stored without a tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Rows", "MixedRowsError", "replay_movement", "Movement", "map_rows",
           "combine_rows", "broadcast_rows", "check_output_rows", "per_row"]


class MixedRowsError(Exception):
    """An operation combines entries that depend on different rows (the reason is the
    message); the tracer turns it into a refusal naming the operation."""


@dataclass(frozen=True)
class Rows:
    """Rows of a tensor of shape ``shape``: ``tensor`` (int64, -1 for constant entries), or
    None for the standard layout (``rows[b, ...] = b``)."""

    shape: tuple[int, ...]
    tensor: torch.Tensor | None = None

    @classmethod
    def standard(cls, shape) -> Rows:
        return cls(tuple(shape))

    @property
    def is_standard(self) -> bool:
        return self.tensor is None

    def materialize(self) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        batch = torch.arange(self.shape[0], dtype=torch.int64)
        return batch.reshape(-1, *([1] * (len(self.shape) - 1))).expand(self.shape)

    def live(self) -> torch.Tensor | None:
        """Boolean mask of the entries that depend on the input (None: all)."""
        if self.tensor is None:
            return None
        mask = self.tensor >= 0
        return None if bool(mask.all()) else mask


def _compress(shape, tensor: torch.Tensor) -> Rows:
    """Store ``tensor`` as the standard layout when it is one."""
    shape = tuple(shape)
    if len(shape) >= 1 and tensor.shape == shape:
        standard = Rows.standard(shape).materialize()
        if torch.equal(tensor, standard):
            return Rows(shape)
    return Rows(shape, tensor.contiguous())


# =========================================================================== movement


@dataclass(frozen=True)
class Movement:
    """A replayed data movement.

    Attributes
    ----------
    copies : dict
        Operand key -> the largest number of output entries copying one of its entries
        (0 when the output uses none of it).
    rows : Rows
        Rows of the output.
    identity : dict
        Operand key -> True when the output is that operand's entries in memory order
        (a reshape, ``clone``, a channel-major flatten).
    tokens_whole : bool
        Every output token (last-dimension vector) copies entries of one input token.
    last_dim_kept : bool
        Every output token is a whole input token in order (or a fill): a diagonal scaling
        of the last dimension commutes with the movement.
    """

    copies: dict
    rows: Rows
    identity: dict
    tokens_whole: bool
    last_dim_kept: bool = False


def replay_movement(run, operands: dict, output_shape) -> Movement:
    r"""Replay ``run`` on encoded operands and prove that it is a data movement.

    Parameters
    ----------
    run : callable
        ``run(encoded: dict) -> Tensor``: the operation with each input-dependent operand
        replaced by the float64 tensor ``encoded[key]`` (constants kept as they are).
    operands : dict
        Operand key -> (Tensor (its actual value), :class:`Rows`).
    output_shape : tuple

    Notes
    -----
    Operand :math:`k` is encoded as :math:`o_k + 1 + \text{arange}` with disjoint offsets
    :math:`o_k`, and the operation is run twice, the second time with every code shifted by
    :math:`S` (the total count plus one). An output entry that copies an operand entry
    changes by exactly :math:`S`; a constant fill (padding value, a constant operand of a
    concatenation) does not change; anything else (a weighted combination, an
    interpolation) changes otherwise and the operation is refused as not being a movement.
    Codes below :math:`2^{53}` are exact in float64.
    """
    offsets, total = {}, 0
    for key, (value, _) in operands.items():
        offsets[key] = total
        total += value.numel()
    if total + 2 >= 2 ** 52:
        raise MixedRowsError("the tensor is too large to replay its movement exactly")
    shift = float(total + 1)
    encoded = {key: (offsets[key] + 1 + torch.arange(value.numel(), dtype=torch.float64,
                                                     device=value.device)
                     ).reshape(value.shape) for key, (value, _) in operands.items()}
    first = run(encoded)
    second = run({key: code + shift for key, code in encoded.items()})
    if not isinstance(first, torch.Tensor) or tuple(first.shape) != tuple(output_shape):
        raise MixedRowsError("its replay on encoded entries did not give its output shape")
    first, second = first.detach().double().cpu(), second.detach().double().cpu()
    change = second - first
    copied = change == shift
    # a fill does not change between the replays; uninitialised memory may hold NaN
    filled = (change == 0) | (torch.isnan(first) & torch.isnan(second))
    if not bool((copied | filled).all()):
        raise MixedRowsError("it is not a data movement (an output entry is neither a copy "
                             "of one input entry nor a constant)")
    codes = torch.where(copied, first - 1, torch.full_like(first, -1)).round().long()
    if bool(((codes < -1) | (codes >= total)).any()):
        raise MixedRowsError("its replay produced codes out of range")
    flat = codes.reshape(-1)
    rows = torch.full(flat.shape, -1, dtype=torch.int64)
    copies, identity = {}, {}
    for key, (value, source_rows) in operands.items():
        start, size = offsets[key], value.numel()
        mine = (flat >= start) & (flat < start + size)
        index = flat[mine] - start
        counts = torch.bincount(index, minlength=size) if index.numel() else \
            torch.zeros(size, dtype=torch.int64)
        copies[key] = int(counts.max()) if size else 0
        rows[mine] = source_rows.materialize().reshape(-1).cpu()[index]
        identity[key] = bool(mine.all()) and flat.numel() == size and bool(
            torch.equal(index, torch.arange(size)))
    tokens_whole = _tokens_whole(codes, operands, offsets)
    return Movement(copies, _compress(output_shape, rows.reshape(tuple(output_shape))),
                    identity, tokens_whole, _last_dim_kept(codes, operands, offsets))


def _last_dim_kept(codes: torch.Tensor, operands: dict, offsets: dict) -> bool:
    """Every output token is a whole input token, entries in order (fills allowed)."""
    if codes.dim() == 0 or not operands:
        return False
    sizes = {value.shape[-1] if value.dim() else 0 for value, _ in operands.values()}
    if len(sizes) != 1 or sizes != {codes.shape[-1]}:
        return False
    tokens = codes.reshape(-1, codes.shape[-1])
    copied = tokens[:, 0] >= 0
    tokens = tokens[copied]
    if tokens.numel() == 0:
        return True
    starts = torch.zeros(tokens.shape[0], dtype=torch.int64)
    for key, (value, _) in operands.items():
        start = offsets[key]
        mine = (tokens[:, 0] >= start) & (tokens[:, 0] < start + value.numel())
        starts[mine] = start
    local = tokens - starts[:, None]
    in_order = local - local[:, :1] == torch.arange(tokens.shape[1])
    aligned = local[:, 0] % tokens.shape[1] == 0
    return bool(in_order.all()) and bool(aligned.all())


def _tokens_whole(codes: torch.Tensor, operands: dict, offsets: dict) -> bool:
    """Every output token copies entries of a single input token (or is a fill)."""
    if codes.dim() == 0:
        return False
    token_ids = torch.full_like(codes, -1)
    for key, (value, _) in operands.items():
        if value.dim() == 0:
            return False
        start, size = offsets[key], value.numel()
        mine = (codes >= start) & (codes < start + size)
        # a global token number: operand offset + index // last-dimension size
        token_ids[mine] = start + (codes[mine] - start) // value.shape[-1]
    tokens = token_ids.reshape(-1, codes.shape[-1]) if codes.numel() else token_ids
    filled = tokens.clone()
    filled[filled < 0] = torch.iinfo(torch.int64).max
    lowest = filled.amin(dim=-1, keepdim=True)
    ok = (tokens == lowest) | (tokens < 0)
    return bool(ok.all())


# =========================================================================== combinations


def broadcast_rows(rows: Rows, shape) -> Rows:
    """Rows of a tensor broadcast (right-aligned) to ``shape``."""
    shape = tuple(shape)
    if rows.shape == shape:
        return rows
    tensor = rows.materialize()
    tensor = tensor.reshape((1,) * (len(shape) - tensor.dim()) + tuple(tensor.shape))
    return _compress(shape, tensor.expand(shape))


def combine_rows(items: list[Rows], shape) -> Rows:
    """Rows of an elementwise combination of operands (already of ``shape``)."""
    items = [broadcast_rows(item, shape) for item in items]
    if all(item.is_standard for item in items):
        return Rows.standard(shape)
    tensors = [item.materialize() for item in items]
    result = tensors[0]
    for other in tensors[1:]:
        clash = (result >= 0) & (other >= 0) & (result != other)
        if bool(clash.any()):
            raise MixedRowsError("it combines entries that depend on different rows of the "
                                 "batch")
        result = torch.maximum(result, other)
    return _compress(shape, result)


def map_rows(rows: Rows, mixes: tuple[int, ...], keepdim: bool, shape) -> Rows:
    """Rows of the output of an operation that combines entries along ``mixes``."""
    shape = tuple(shape)
    ndim = len(rows.shape)
    mixes = tuple(sorted({d % ndim for d in mixes})) if ndim else ()
    if rows.is_standard:
        if 0 in mixes:
            if rows.shape[0] > 1:
                raise MixedRowsError("it combines entries along the batch dimension")
        elif keepdim and len(shape) == ndim and shape[0] == rows.shape[0]:
            return Rows.standard(shape)
        elif not keepdim and len(shape) == ndim - len(mixes) and shape[:1] == rows.shape[:1]:
            return Rows.standard(shape)
    tensor = rows.materialize()
    for d in mixes:
        if tensor.shape[d] == 0:
            tensor = tensor.narrow(d, 0, 0)
            continue
        # entries that do not depend on the input (-1) combine with any row
        common = tensor.amax(dim=d, keepdim=True)
        if not bool(((tensor == common) | (tensor < 0)).all()):
            raise MixedRowsError(f"it combines entries along dimension {d}, which holds "
                                 f"entries of different rows of the batch")
        tensor = common
    if not keepdim:
        for d in reversed(mixes):
            tensor = tensor.squeeze(d)
    try:
        return _compress(shape, tensor.expand(shape))
    except RuntimeError as err:
        raise MixedRowsError(f"its output shape {shape} does not follow its input "
                             f"{rows.shape}") from err


def check_output_rows(rows: Rows) -> None:
    """Row ``b`` of the output depends on row ``b`` of the input only."""
    if rows.is_standard:
        return
    tensor = rows.materialize()
    expected = Rows.standard(rows.shape).materialize()
    if not bool(((tensor == expected) | (tensor < 0)).all()):
        raise MixedRowsError("row b of the output depends on another row of the input")


def per_row(values: torch.Tensor, rows: Rows, batch: int, reduce: str = "amax"
            ) -> torch.Tensor:
    """Reduce ``values`` (of the rows' shape) over the entries of each row: Tensor (B,),
    0 for a row without entries; entries that do not depend on the input are left out."""
    values = values.detach().to(torch.float64)
    if rows.is_standard and values.shape[:1] == (batch,):
        flat = values.reshape(batch, -1)
        return flat.amax(dim=1) if reduce == "amax" else flat.amin(dim=1)
    index = rows.materialize().to(values.device).reshape(-1)
    flat = values.reshape(-1)
    keep = index >= 0
    fill = -math.inf if reduce == "amax" else math.inf
    out = torch.full((batch,), fill, dtype=torch.float64, device=values.device)
    out = out.scatter_reduce(0, index[keep], flat[keep], reduce=reduce, include_self=True)
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out)) if reduce == "amax" \
        else out
