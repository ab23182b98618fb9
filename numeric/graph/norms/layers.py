r"""Certified norms of many convolutions at once: a list of layers, or every conv of a model.

The layers are independent, so they are bounded concurrently: ``workers`` threads, each
running single-threaded LAPACK (the Cholesky factorisations of
:func:`~numeric.graph.norms.conv.conv_operator_norm_bound` release the GIL), the most
expensive layers first. Every value is the same certified bound as one call per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import nn

from numeric.errors import InputError
from numeric.graph.norms.conv import (DEFAULT_RTOL, _check_options, conv_operator_norm_bound,
                                      resolve_geometry)

__all__ = ["ConvLayer", "conv_operator_norm_bounds", "model_conv_norm_bounds"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class ConvLayer(NamedTuple):
    """One convolution to bound: a kernel, its input size and its geometry (as in
    :func:`~numeric.graph.norms.conv.conv_operator_norm_bound`)."""

    weight: torch.Tensor
    input_shape: tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    padding_mode: str = "zeros"


def _work(layer: ConvLayer) -> float:
    """A rough cost, only to start the expensive layers first."""
    weight = layer.weight
    channels = min(weight.shape[0] // max(1, layer.groups), weight.shape[1])
    return float(channels) ** 3 * layer.groups * float(torch.tensor(layer.input_shape).prod())


def _map_concurrently(function: Callable[[ConvLayer], float], layers: list[ConvLayer],
                      workers: int) -> list[float]:
    if workers <= 1 or len(layers) <= 1:
        return [function(layer) for layer in layers]
    order = sorted(range(len(layers)), key=lambda i: -_work(layers[i]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {i: pool.submit(function, layers[i]) for i in order}
            return [futures[i].result() for i in range(len(layers))]
    finally:
        torch.set_num_threads(threads)


def conv_operator_norm_bounds(layers: Sequence[ConvLayer | tuple], *, method: str = "auto",
                              rtol: float = DEFAULT_RTOL,
                              workers: int | None = None) -> list[float]:
    r"""Certified norms of many convolutions, bounded concurrently.

    Parameters
    ----------
    layers : sequence of :class:`ConvLayer`, or of ``(nn.Conv{1,2,3}d, input_shape)``
        The layers; a module supplies its own geometry.
    method, rtol
        As in :func:`~numeric.graph.norms.conv.conv_operator_norm_bound`.
    workers : int, optional
        Threads (default ``torch.get_num_threads()``); with more than one, torch runs
        single-threaded inside each for the duration of the call.

    Returns
    -------
    list of float
        ``conv_operator_norm_bound`` of each layer, in order (certified upper bounds).
        Cost: the sum of the layers' costs, divided among the workers.

    Raises
    ------
    InputError
        If a layer is not a ``ConvLayer`` or a ``(module, shape)`` pair, or as the
        single-layer function.

    Examples
    --------
    >>> import torch
    >>> layer = ConvLayer(torch.ones(1, 1, 1, 1), (4, 4))
    >>> conv_operator_norm_bounds([layer, layer], workers=1)  # doctest: +ELLIPSIS
    [1.0000..., 1.0000...]
    """
    _check_options(method, rtol, "conv_operator_norm_bounds")
    normalised = []
    for item in layers:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], _CONVS):
            module, shape = item
            weight, spatial, geometry = resolve_geometry(module, shape, 1, 0, 1, 1, "zeros",
                                                         "conv_operator_norm_bounds")
            item = ConvLayer(weight, spatial, geometry.stride, geometry.padding,
                             geometry.dilation, geometry.groups, geometry.padding_mode)
        if not isinstance(item, ConvLayer):
            raise InputError(f"conv_operator_norm_bounds: expected ConvLayer items or "
                             f"(nn.Conv{{1,2,3}}d, input_shape) pairs, got "
                             f"{type(item).__name__}.")
        normalised.append(item)

    def bound(layer: ConvLayer) -> float:
        return conv_operator_norm_bound(layer.weight, layer.input_shape, stride=layer.stride,
                                        padding=layer.padding, dilation=layer.dilation,
                                        groups=layer.groups, padding_mode=layer.padding_mode,
                                        method=method, rtol=rtol)

    workers = torch.get_num_threads() if workers is None else int(workers)
    return _map_concurrently(bound, normalised, workers)


def _transposed_as_conv(module: nn.Module, output_shape: Sequence[int]) -> ConvLayer:
    """A transposed convolution is the adjoint of the convolution with the same weight and
    geometry from its output grid to its input grid (same norm)."""
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise InputError(f"model_conv_norm_bounds: expected zero padding in a transposed "
                         f"convolution, got {module.padding_mode!r} / {module.padding!r}.")
    return ConvLayer(module.weight.detach(), tuple(output_shape), tuple(module.stride),
                     tuple(module.padding), tuple(module.dilation), module.groups)


def model_conv_norm_bounds(model: nn.Module, example_input: torch.Tensor, *,
                           method: str = "auto", rtol: float = DEFAULT_RTOL,
                           workers: int | None = None) -> dict[str, float]:
    r"""Certified norm of every convolution of ``model`` on the grid it sees.

    Runs ``model`` once on the first row of ``example_input`` (under ``torch.no_grad``) to
    record the spatial size at each ``nn.Conv{1,2,3}d`` and ``nn.ConvTranspose{1,2,3}d``,
    then calls :func:`conv_operator_norm_bounds`. A module called several times gets the
    largest bound over its calls.

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor of shape (B, ...)
    method, rtol, workers
        As in :func:`conv_operator_norm_bounds`.

    Returns
    -------
    dict
        Qualified module name -> certified bound on its operator norm (weights only, in
        float64, whatever the model's dtype). Cost: one forward pass plus the bounds.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False))
    >>> _ = torch.nn.init.constant_(model[0].weight, 2.0)
    >>> model_conv_norm_bounds(model, torch.zeros(1, 1, 4, 4), workers=1)  # doctest: +ELLIPSIS
    {'0': 2.0000...}
    """
    _check_options(method, rtol, "model_conv_norm_bounds")
    calls: list[tuple[str, ConvLayer]] = []
    handles = []

    def hook(name):
        def record(module, inputs, output):
            if isinstance(module, _TRANSPOSED):
                calls.append((name, _transposed_as_conv(module, output.shape[2:])))
                return
            weight, spatial, geometry = resolve_geometry(module, inputs[0].shape[2:], 1, 0,
                                                         1, 1, "zeros",
                                                         "model_conv_norm_bounds")
            calls.append((name, ConvLayer(weight, spatial, geometry.stride,
                                          geometry.padding, geometry.dilation,
                                          geometry.groups, geometry.padding_mode)))
        return record

    for name, module in model.named_modules():
        if isinstance(module, _CONVS + _TRANSPOSED):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for handle in handles:
            handle.remove()
    unique = list(dict.fromkeys((name, layer.input_shape) for name, layer in calls))
    layers = {key: layer for name, layer in calls for key in [(name, layer.input_shape)]}
    values = conv_operator_norm_bounds([layers[key] for key in unique], method=method,
                                       rtol=rtol, workers=workers)
    result: dict[str, float] = {}
    for (name, _), value in zip(unique, values):
        result[name] = max(value, result.get(name, 0.0))
    return result

