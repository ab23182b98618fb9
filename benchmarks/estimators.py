"""White-box estimators side by side with the paper's released recipe.

Every timing in a table is measured in this process, one method after the other on the
same model and inputs (best of ``repeats`` runs), and reported as a ratio to the baseline
(:mod:`benchmarks.baseline`: one input at a time, one backward pass per class).

- K = 10, batch 64, a small CNN on 16x16 inputs: ``fisher_top_eigenvalue(method="auto")``
  (which picks the exact path) against the baseline, values to 1e-5 relative.
- K = 1000 (an ImageNet-sized head), batch 16: the default path (Lanczos) and the exact
  path against the baseline, on small CNN / ViT models.
- K = 1000 on torchvision models at 32x32 (random init): resnet18 on 2 and 8 inputs and a
  CIFAR-sized torchvision ``VisionTransformer`` (patch 4, 6 layers, width 256) on 2
  inputs. Errors there are against float64 Lanczos to a relative residual of 1e-10.
- Peak memory per input of the exact and Lanczos paths at K = 1000: on CPU the growth of
  the peak resident set size (``ru_maxrss``) of a fresh subprocess running one call, next
  to the analytic size of the exact path's ``B (K-1) d`` Jacobian.

The CUDA rows (torchvision at 224x224) are :mod:`benchmarks.gpu`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch
from torch import nn

from benchmarks._threads import single_threaded

__all__ = ["run", "SmallCNN", "SmallViT", "benchmark_model", "cifar_vit"]


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-maxpool stages and a two-layer head."""

    def __init__(self, num_classes: int = 10, channels: int = 3, size: int = 16,
                 width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, 128),
                                  nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class SmallViT(nn.Module):
    """Patch embedding, pre-norm blocks with nn.MultiheadAttention, class token."""

    def __init__(self, num_classes: int = 10, channels: int = 3, size: int = 16,
                 patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        tokens = (size // patch) ** 2 + 1
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(dim), "attention": nn.MultiheadAttention(
                dim, heads, batch_first=True),
            "norm2": nn.LayerNorm(dim), "mlp": nn.Sequential(
                nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))})
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.position
        for block in self.blocks:
            h = block["norm1"](t)
            t = t + block["attention"](h, h, h, need_weights=False)[0]
            t = t + block["mlp"](block["norm2"](t))
        return self.head(self.norm(t[:, 0]))


def benchmark_model(kind: str, num_classes: int, seed: int = 0, head_scale: float = 4.0
                    ) -> nn.Module:
    """A seeded random-init model in eval mode; the last layer is scaled by ``head_scale``
    so that the softmax is not uniform (as after training)."""
    torch.manual_seed(seed)
    model = (SmallCNN if kind == "cnn" else SmallViT)(num_classes)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(head_scale)
    return model.eval()


def _best_time(function, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) / b.double()).abs().max())


def _row(name, seconds, base_seconds, values, base, reference, note=""):
    exact = (values.double() - reference) / reference
    return (f"| {name} | {seconds:.3f} | {base_seconds / seconds:.1f}x | "
            f"{_relative(values, base):.1e} | {float(exact.abs().max()):.1e} | "
            f"{float(exact.abs().median()):.1e} | {note} |")


def _comparison(title: str, model: nn.Module, x: torch.Tensor, methods, repeats: int,
                reference: torch.Tensor | None = None, preface: str = "") -> str:
    from benchmarks.baseline import paper_top_eigenvalue
    from numeric.fisher import fisher_eigenvalues, fisher_top_eigenvalue

    if reference is None:
        reference = fisher_eigenvalues(model, x, dtype=torch.float64)[:, 0]
    base_seconds, base = _best_time(lambda: paper_top_eigenvalue(model, x), repeats)
    lines = [f"### {title}", "", *([preface, ""] if preface else []),
             "| method | seconds | speed-up vs paper | max rel. diff vs paper | "
             "max rel. error vs float64 | median rel. error vs float64 | notes |",
             "|---|---|---|---|---|---|---|",
             _row("paper recipe (per input, K backward passes)", base_seconds, base_seconds,
                  base, base, reference, "baseline")]
    for label, kwargs in methods:
        seconds, (values, diagnostics) = _best_time(
            lambda: fisher_top_eigenvalue(model, x, generator=torch.Generator().manual_seed(0),
                                          return_diagnostics=True, **kwargs), repeats)
        note = f"ran {diagnostics.method}"
        if diagnostics.method in ("lanczos", "power"):
            note += (f", {diagnostics.products} products (block {diagnostics.block_size}, "
                     f"{int(diagnostics.iterations.max())} per row at most), converged "
                     f"{int(diagnostics.converged.sum())}/{len(values)}")
        lines.append(_row(label, seconds, base_seconds, values, base, reference, note))
    return "\n".join(lines)


def cifar_vit(num_classes: int = 1000, size: int = 32, seed: int = 0) -> nn.Module:
    """torchvision ``VisionTransformer`` sized for 32x32 inputs (patch 4: 65 tokens of width
    256, 6 layers, 8 heads), random init; the zero-initialised head is redrawn
    N(0, 0.05^2) so that F is not 0."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(image_size=size, patch_size=4, num_layers=6, num_heads=8,
                              hidden_dim=256, mlp_dim=512, num_classes=num_classes)
    nn.init.normal_(model.heads.head.weight, std=0.05)
    return model.eval()


def _torchvision_sections(quick: bool) -> list[str]:
    """resnet18 and a ViT from torchvision at 32x32, K = 1000, against the paper's recipe."""
    from benchmarks.gpu import torchvision_model
    from numeric.fisher import fisher_top_eigenvalue

    generator = torch.Generator().manual_seed(2)
    cases = [("resnet18", torchvision_model("resnet18", 32), 2)]
    if not quick:
        cases += [("resnet18", cases[0][1], 8), ("ViT (torchvision, patch 4)", cifar_vit(), 2)]
    sections = []
    for name, model, batch in cases:
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        reference = fisher_top_eigenvalue(model, x, "lanczos", tol=1e-10, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            top = torch.softmax(model(x), dim=-1).max(dim=-1).values
        preface = (f"Largest softmax probability per input: "
                   f"{', '.join(f'{float(p):.3f}' for p in top)}. Errors against float64 "
                   f"Lanczos to a relative residual of 1e-10.")
        sections += ["", _comparison(
            f"K = 1000, batch {batch}, torchvision {name} on 3x32x32 (random init)",
            model, x, [("fisher_top_eigenvalue(method='auto')", {"method": "auto"}),
                       ("fisher_top_eigenvalue(method='exact')", {"method": "exact"})],
            1, reference=reference.double(), preface=preface)]
    return sections


_MEMORY_SCRIPT = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from benchmarks.estimators import benchmark_model
from numeric.fisher import fisher_top_eigenvalue
torch.set_num_threads(1)
model = benchmark_model({kind!r}, {classes})
x = torch.randn({batch}, 3, 16, 16, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    model(x)

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

try:
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM, the peak resident set size
    fisher_top_eigenvalue(model, x, {method!r})
    kib, how = status("VmHWM") - before, "VmHWM"
except OSError:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fisher_top_eigenvalue(model, x, {method!r})
    kib, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "ru_maxrss"
print(json.dumps({{"kib": kib, "how": how}}))
"""


def _peak_rss_per_input(kind: str, method: str, classes: int, batch: int
                        ) -> tuple[float, str]:
    """MiB per input: growth of the peak RSS of a fresh process during one call."""
    from pathlib import Path
    root = str(Path(__file__).resolve().parent.parent)
    script = _MEMORY_SCRIPT.format(root=root, kind=kind, classes=classes, batch=batch,
                                   method=method)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=root)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report["kib"] / 1024 / batch, report["how"]


def _memory_section(batch: int) -> str:
    d = 3 * 16 * 16
    rows, how = [], "VmHWM"
    for kind in ("cnn", "vit"):
        for method in ("exact", "lanczos"):
            measured, how = _peak_rss_per_input(kind, method, 1000, batch)
            analytic = f"{999 * d * 4 / 2 ** 20:.2f}" if method == "exact" else "-"
            rows.append(f"| {kind} | {method} | {measured:.2f} | {analytic} |")
    source = ("the peak resident set size (`VmHWM`, reset just before the call)"
              if how == "VmHWM" else "the peak resident set size (`ru_maxrss`)")
    return "\n".join([
        f"### Peak memory per input at K = 1000, batch {batch} (CPU)", "",
        f"Growth of {source} over the resident size before one call, in a fresh process, "
        f"divided by the batch (includes allocator slack and the retained autograd "
        f"graphs). The analytic column is the exact path's whitened Jacobian alone, "
        f"`(K-1) d` float32 entries per input.", "",
        "| model | method | measured MiB / input | analytic Jacobian MiB / input |",
        "|---|---|---|---|", *rows])


def run(quick: bool = False) -> str:
    """Markdown section: speed and agreement with the paper's recipe, memory.

    CPU timings use one thread (restored afterwards): the machines this runs on are
    shared, and one thread keeps the side-by-side ratios stable.
    """
    return single_threaded(_run, quick)


def _run(quick: bool) -> str:
    repeats = 2 if quick else 3
    generator = torch.Generator().manual_seed(1)
    sections = ["## White-box estimators vs the paper's recipe", "",
                f"CPU, 1 torch thread, float32; random-init models (the small ones with "
                f"their last layer x4, the torchvision ones as initialised), inputs N(0, 1). "
                f"Best of {repeats} runs per method for the small models, one run for the "
                f"torchvision ones. Errors are against float64 values "
                f"(`fisher_eigenvalues(..., dtype=torch.float64)` unless a table says "
                f"otherwise); a ReLU "
                f"or max-pool input within rounding of its kink can switch sides between "
                f"float32 kernels of different batch sizes, which moves that input's float32 "
                f"value (paper recipe or ours) by up to ~1e-3.", ""]
    batch = 64
    x = torch.randn(batch, 3, 16, 16, generator=generator)
    sections.append(_comparison(
        f"K = 10, batch {batch}, small CNN on 3x16x16", benchmark_model("cnn", 10), x,
        [("fisher_top_eigenvalue(method='auto')", {"method": "auto"}),
         ("fisher_top_eigenvalue(method='lanczos')", {"method": "lanczos"})]
        + ([] if quick else [("fisher_top_eigenvalue(method='power', tol=1e-4)",
                              {"method": "power", "tol": 1e-4})]),
        repeats))
    batch = 4 if quick else 16
    x = torch.randn(batch, 3, 16, 16, generator=generator)
    kinds = ("cnn",) if quick else ("cnn", "vit")
    for kind in kinds:
        sections += ["", _comparison(
            f"K = 1000, batch {batch}, small {kind.upper()} on 3x16x16",
            benchmark_model(kind, 1000), x,
            [("fisher_top_eigenvalue(method='auto')", {"method": "auto"}),
             ("fisher_top_eigenvalue(method='exact')", {"method": "exact"})],
            1 if kind == "vit" or quick else 2)]
    sections += _torchvision_sections(quick)
    sections += ["", _memory_section(batch)]
    return "\n".join(sections)


if __name__ == "__main__":  # pragma: no cover
    print(run(quick="--quick" in sys.argv))
