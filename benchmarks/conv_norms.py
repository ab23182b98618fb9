"""Certified convolution norms of whole models: every method side by side, and tightness.

For torchvision vgg16 and resnet18 (random initialisation: no weights are downloaded) at
224x224 and 32x32, every conv layer is bounded at the grid it sees, by:

- ``method='auto'`` with ``workers=2`` (the 2-core setting of the issue: two layers at a
  time, single-threaded LAPACK each) and with ``workers=1``;
- ``'grid'`` and ``'torus'`` forced (``workers=1``);
- the previous implementation: one Hermitian eigensolve per DFT frequency of the full grid
  (Sedghi et al. 2019), in float64;
- Gram iteration (Delattre et al. 2023, six iterations per frequency of the grid; a
  mathematical upper bound of the circulant norm, rounding not certified), at 32x32 only.

Wall-clock seconds are measured in this process one method after the other; the
single-worker rows are also given as CPU seconds (``time.process_time``), which a shared
machine's load does not inflate. Tightness: each layer's bound against a converged power
iteration on the layer itself (a lower bound on its exact norm, so the ratio overstates
the looseness), and over random small layers against the exact norm of the dense matrix.
"""

from __future__ import annotations

import math
import time

import torch

from benchmarks._threads import single_threaded

__all__ = ["run", "model_layers", "eigh_grid_bound", "gram_iteration_bound"]


def model_layers(name: str, size: int) -> list:
    """The :class:`~numeric.graph.norms.ConvLayer` of every conv of a torchvision model."""
    import torchvision

    from numeric.graph.norms import ConvLayer
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    layers, hooks = [], []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda m, args, out: layers.append(ConvLayer(
                    m.weight.detach().double(), tuple(args[0].shape[2:]), m.stride,
                    m.padding, m.dilation, m.groups))))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return layers


def _grid_symbols(layer, real_fft: bool = True):
    """Yield chunks (F, m, n) of the reduced kernel's symbol on its grid."""
    from numeric.graph.norms.conv import _grid_sizes, resolve_geometry
    from numeric.graph.norms.geometry import reduce_kernel
    weight, spatial, geometry = resolve_geometry(layer.weight, layer.input_shape,
                                                 layer.stride, layer.padding,
                                                 layer.dilation, layer.groups, "zeros")
    reduced = reduce_kernel(weight, spatial, geometry)
    kernel = reduced.kernel
    dims = tuple(range(3, kernel.dim()))
    symbol = torch.fft.rfftn(kernel, s=_grid_sizes(reduced), dim=dims)
    groups, m, n = kernel.shape[:3]
    symbol = symbol.reshape(groups, m, n, -1).permute(3, 0, 1, 2).reshape(-1, m, n)
    chunk = max(1, 2 ** 22 // (m * n))
    for start in range(0, symbol.shape[0], chunk):
        yield symbol[start:start + chunk]


def eigh_grid_bound(layer) -> float:
    """The previous implementation: largest singular value at every DFT frequency of the
    grid, each from a Hermitian eigensolve of the smaller Gram matrix (float64)."""
    top = 0.0
    for matrices in _grid_symbols(layer):
        if matrices.shape[-2] > matrices.shape[-1]:
            matrices = matrices.mH
        gram = matrices @ matrices.mH
        top = max(top, float(torch.linalg.eigvalsh(gram)[:, -1].max()))
    return math.sqrt(max(top, 0.0))


def gram_iteration_bound(layer, iterations: int = 6) -> float:
    r"""Delattre et al. (2023): :math:`\|A\|_2 \le \|G_t\|_F^{2^{-t}}` with
    :math:`G_{j+1} = G_j^H G_j` (rescaled), at every frequency of the grid."""
    top = 0.0
    for matrices in _grid_symbols(layer):
        if matrices.shape[-2] < matrices.shape[-1]:
            matrices = matrices.mH
        log_scale = torch.zeros(matrices.shape[0], dtype=torch.float64)
        power = 1.0
        for _ in range(iterations):
            norm = torch.linalg.matrix_norm(matrices).clamp_min(1e-300)
            matrices = matrices / norm[:, None, None]
            log_scale = 2 * (log_scale + norm.log())
            matrices = matrices.mH @ matrices
            power /= 2
        values = (torch.linalg.matrix_norm(matrices).log() * power + log_scale * power).exp()
        top = max(top, float(values.max()))
    return top


def _timed(function) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def _methods(size: int, quick: bool):
    from numeric.graph.norms import conv_operator_norm_bounds
    rows = [("auto, workers=2", lambda ls: conv_operator_norm_bounds(ls, workers=2)),
            ("auto, workers=1", lambda ls: conv_operator_norm_bounds(ls, workers=1)),
            ("grid", lambda ls: conv_operator_norm_bounds(ls, method="grid", workers=1)),
            ("torus", lambda ls: conv_operator_norm_bounds(ls, method="torus", workers=1))]
    if size <= 32 or not quick:
        rows.append(("previous: eigensolve per grid frequency",
                     lambda ls: [eigh_grid_bound(layer) for layer in ls]))
    if size <= 32:
        rows.append(("Gram iteration (Delattre 2023), grid",
                     lambda ls: [gram_iteration_bound(layer) for layer in ls]))
    return rows


def _power_estimates(layers, max_iter: int) -> list[float]:
    from numeric.graph.norms import conv_operator_norm_estimate
    return [conv_operator_norm_estimate(
        layer.weight, (layer.weight.shape[1] * layer.groups, *layer.input_shape),
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
        groups=layer.groups, max_iter=max_iter, tol=1e-9,
        generator=torch.Generator().manual_seed(0)) for layer in layers]


def _model_section(name: str, size: int, quick: bool) -> list[str]:
    layers = model_layers(name, size)
    lines = [f"### {name} at {size}x{size} ({len(layers)} conv layers)", "",
             "| method | wall s | CPU s | product of layer bounds | vs auto |",
             "|---|---|---|---|---|"]
    reference = None
    for label, function in _methods(size, quick):
        values, wall, cpu = _timed(lambda: function(layers))
        product = math.prod(values)
        reference = reference or product
        cpu_text = "-" if "workers=2" in label else f"{cpu:.2f}"
        lines.append(f"| {label} | {wall:.2f} | {cpu_text} | {product:.4g} | "
                     f"{product / reference:.4f} |")
    if size <= 32:
        from numeric.graph.norms import conv_operator_norm_bounds
        bounds = conv_operator_norm_bounds(layers, workers=1)
        estimates = _power_estimates(layers, 200 if quick else 500)
        ratios = torch.tensor([b / e for b, e in zip(bounds, estimates)])
        product = math.prod(bounds) / math.prod(estimates)
        lines += ["", f"auto bound / power iteration ({200 if quick else 500} steps, a lower "
                      f"bound on the exact norm) per layer: min {ratios.min():.4f}, median "
                      f"{ratios.median():.4f}, max {ratios.max():.4f} (product {product:.4f})."]
    return lines + [""]


def _small_layer_section(count: int) -> list[str]:
    """Bound / exact dense norm over random small layers (2-d, 4-8 channels, n <= 12)."""
    from numeric.graph.norms import conv_dense_matrix, conv_operator_norm_bound
    generator = torch.Generator().manual_seed(0)
    ratios = {"auto": [], "grid": [], "torus": []}
    for _ in range(count):
        draw = torch.randint(0, 1000, (7,), generator=generator).tolist()
        k, s, d, p = [1, 2, 3, 3, 5][draw[0] % 5], [1, 1, 2][draw[1] % 3], \
            [1, 1, 2][draw[2] % 3], draw[3] % 3
        n = max(d * (k - 1) + 1 - 2 * p, 4 + draw[4] % 9)
        c = [4, 8][draw[5] % 2]
        weight = torch.randn(c, c, k, k, dtype=torch.float64, generator=generator)
        exact = float(torch.linalg.matrix_norm(conv_dense_matrix(
            weight, (n, n), stride=s, padding=p, dilation=d), ord=2))
        for method in ratios:
            bound = conv_operator_norm_bound(weight, (n, n), stride=s, padding=p,
                                             dilation=d, method=method)
            if bound < exact:
                raise AssertionError(f"conv_norms: {method} bound {bound} below the exact "
                                     f"norm {exact} (k={k}, s={s}, d={d}, p={p}, n={n})")
            ratios[method].append(bound / exact)
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
    lines = [f"### Tightness on {count} random small layers (exact dense SVD)", "",
             "| method | min | q25 | median | q75 | q90 | max |", "|---|---|---|---|---|---|---|"]
    for method, values in ratios.items():
        q = torch.tensor(values, dtype=torch.float64).quantile(levels).tolist()
        lines.append(f"| {method} | " + " | ".join(f"{v:.4f}" for v in q) + " |")
    lines += ["", "Random 2-d layers with kernel 1-5, stride 1-2, dilation 1-2, padding 0-2, "
                  "n <= 12. On grids this small the circulant embedding itself is loose "
                  "(zero padding vs wrap-around); the gap closes as n grows.", ""]
    return lines


def run(quick: bool = False) -> str:
    """The Markdown section (benchmarks protocol)."""
    return single_threaded(_run, quick)


def _run(quick: bool) -> str:
    lines = ["## Certified convolution norms of whole models", "",
             "torchvision models with random initialisation; every conv layer bounded at "
             "the grid it sees. CPU seconds are for one worker (the single-worker rows); "
             "wall seconds are this machine's, under whatever load it had. 'product of "
             "layer bounds' multiplies the per-layer certified values (the plain Lipschitz "
             "product), 'vs auto' divides it by auto's. The eigensolve and Gram-iteration "
             "rows are references, not certified for rounding.", ""]
    for name in ("vgg16", "resnet18"):
        for size in (224, 32):
            lines += _model_section(name, size, quick)
    lines += _small_layer_section(20 if quick else 60)
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys
    print(run(quick="--quick" in sys.argv))
