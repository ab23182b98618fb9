"""White-box estimators side by side with the paper's released recipe.

Every timing in a table is measured in this process, one method after the other on the
same model and inputs (best of ``repeats`` runs), and reported as a ratio to the baseline
(:mod:`benchmarks.baseline`: one input at a time, one backward pass per class).

- K = 10, batch 64, a small CNN on 16x16 inputs: ``fisher_top_eigenvalue(method="auto")``
  (which picks the exact path) against the baseline, values to 1e-5 relative.
- K = 1000 (an ImageNet-sized head), batch 16: Lanczos against the baseline.
- Peak memory per input of the exact and Lanczos paths at K = 1000: on CPU the growth of
  the peak resident set size (``ru_maxrss``) of a fresh subprocess running one call, next
  to the analytic size of the exact path's ``B (K-1) d`` Jacobian; on CUDA
  ``torch.cuda.max_memory_allocated``.
- On CUDA also torchvision resnet18 and vit_b_16 (224x224, K = 1000); without a GPU the
  section says that it was skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch
from torch import nn

from benchmarks._threads import single_threaded

__all__ = ["run", "SmallCNN", "SmallViT", "benchmark_model", "torchvision_section"]


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


def _comparison(title: str, model: nn.Module, x: torch.Tensor, methods, repeats: int) -> str:
    from benchmarks.baseline import paper_top_eigenvalue
    from numeric.fisher import fisher_eigenvalues, fisher_top_eigenvalue

    reference = fisher_eigenvalues(model, x, dtype=torch.float64)[:, 0]
    base_seconds, base = _best_time(lambda: paper_top_eigenvalue(model, x), repeats)
    lines = [f"### {title}", "",
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
            note += (f", {diagnostics.products} products, converged "
                     f"{int(diagnostics.converged.sum())}/{len(values)}")
        lines.append(_row(label, seconds, base_seconds, values, base, reference, note))
    return "\n".join(lines)


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


def _gpu_section(quick: bool) -> str:
    if not torch.cuda.is_available():
        return ("### torchvision resnet18 / vit_b_16 on GPU\n\n"
                "No GPU in this run: the torchvision resnet18 / vit_b_16 comparison "
                "(224x224, K = 1000) was skipped. Rerun `python -m benchmarks` on a CUDA "
                "machine to fill this section.")
    return torchvision_section(torch.device("cuda"), batch=4 if quick else 16, size=224)


def torchvision_section(device: torch.device, batch: int, size: int) -> str:
    """resnet18 and vit_b_16 (random init, K = 1000): paper recipe vs Lanczos vs exact.

    torchvision initialises the ViT head to zero (F = 0); it is redrawn N(0, 0.05^2).
    Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (not measured on CPU).
    """
    import torchvision.models as tvm

    from benchmarks.baseline import paper_top_eigenvalue
    from numeric.fisher import fisher_top_eigenvalue
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    lines = [f"### torchvision resnet18 / vit_b_16 ({size}x{size}, K = 1000)", "",
             f"{where}; batch {batch}; float32.", "",
             "| model | method | seconds | speed-up vs paper | max rel. diff | "
             "peak MiB / input |", "|---|---|---|---|---|---|"]

    def measured(function):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        seconds, values = _best_time(function, 1)
        memory = torch.cuda.max_memory_allocated(device) / 2 ** 20 / batch if cuda else None
        return seconds, values, "-" if memory is None else f"{memory:.0f}"

    for name in ("resnet18", "vit_b_16"):
        torch.manual_seed(0)
        extra = {"image_size": size} if name == "vit_b_16" else {}
        model = tvm.get_model(name, weights=None, **extra)
        if name == "vit_b_16":
            nn.init.normal_(model.heads.head.weight, std=0.05)
        model = model.to(device).eval()
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)
                        ).to(device)
        base_seconds, base, base_memory = measured(lambda: paper_top_eigenvalue(model, x))
        lines.append(f"| {name} | paper recipe | {base_seconds:.2f} | 1.0x | 0 | "
                     f"{base_memory} |")
        for method in ("lanczos", "exact"):
            seconds, values, memory = measured(lambda: fisher_top_eigenvalue(
                model, x, method, generator=torch.Generator().manual_seed(0)))
            lines.append(f"| {name} | {method} | {seconds:.2f} | "
                         f"{base_seconds / seconds:.1f}x | {_relative(values, base):.1e} | "
                         f"{memory} |")
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """Markdown section: speed and agreement with the paper's recipe, memory, GPU.

    CPU timings use one thread (restored afterwards): the machines this runs on are
    shared, and one thread keeps the side-by-side ratios stable.
    """
    return single_threaded(_run, quick)


def _run(quick: bool) -> str:
    repeats = 2 if quick else 3
    generator = torch.Generator().manual_seed(1)
    sections = ["## White-box estimators vs the paper's recipe", "",
                f"CPU, 1 torch thread, float32; random-init models "
                f"(last layer x4), inputs N(0, 1). Best of {repeats} runs per method. "
                f"Errors are against `fisher_eigenvalues(..., dtype=torch.float64)`; a ReLU "
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
    sections += ["", _memory_section(batch), "", _gpu_section(quick)]
    return "\n".join(sections)


if __name__ == "__main__":  # pragma: no cover
    print(run(quick="--quick" in sys.argv))
