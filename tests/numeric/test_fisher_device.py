"""Device choice and full precision: resolve_device, the estimators' device argument,
no autocast / TF32 / bfloat16 inside the estimators, and the batching that must not change
a value (replicated rows in the exact path, Lanczos blocks, rows dropped once converged).

Everything here runs on the CPU (a machine without a GPU is simulated where it matters):
a CUDA request there must give one line, and the precision settings are global flags
that exist on every build.
"""

import pytest
import torch
from torch import nn

from numeric.device import full_precision, resolve_device
from numeric.errors import InputError, NumericError
from numeric.fisher import (fisher_eigenvalues, fisher_top_eigenvalue, fisher_trace,
                            fisher_vector_product)
from numeric.fisher import exact as exact_module
from numeric.fisher import iterative as iterative_module
from tests.numeric.fisher_models import build
from tests.reference import exact_fisher_spectrum

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

@pytest.mark.parametrize("spec,expected", [
    ("cpu", torch.device("cpu")), (" CPU ", torch.device("cpu")),
    ("cpu:0", torch.device("cpu")), (torch.device("cpu"), torch.device("cpu")),
])
def test_cpu_spellings(spec, expected):
    assert resolve_device(spec) == expected


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected == resolve_device(None).type


@pytest.mark.parametrize("spec,match", [
    ("tpu", r"^resolve_device: expected a device 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', "
            r"got 'tpu'\.$"),
    ("gpu", r"got 'gpu'\.$"),
    ("cuda:x", r"got 'cuda:x'\.$"),
    ("cpu:1", r"got 'cpu:1'\.$"),
    ("meta", r"got 'meta' \(meta tensors hold no values to measure\)\.$"),
    (3, r"as a str or torch.device, got int\.$"),
])
def test_unknown_devices_are_refused_in_one_line(spec, match):
    with pytest.raises(InputError, match=match) as info:
        resolve_device(spec)
    assert "\n" not in str(info.value)


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_is_one_line(spec, no_gpu):
    with pytest.raises(InputError, match=r"^resolve_device: expected an available device, "
                                         r"got 'cuda(:\d)?' but torch sees no CUDA device "
                                         r"\(torch.cuda.is_available\(\) is False\); use "
                                         r"'cpu' or 'auto'\.$"):
        resolve_device(spec)


def test_mps_when_unavailable(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"got 'mps' but torch sees no MPS device"):
        resolve_device("mps")


def test_the_caller_names_itself():
    with pytest.raises(InputError, match=r"^estimate: expected a device"):
        resolve_device("tpu", caller="estimate")


ESTIMATORS = {
    "fisher_eigenvalues": lambda m, x, **kw: fisher_eigenvalues(m, x, **kw),
    "fisher_top_eigenvalue": lambda m, x, **kw: fisher_top_eigenvalue(
        m, x, "lanczos", generator=torch.Generator().manual_seed(0), **kw),
    "fisher_trace": lambda m, x, **kw: fisher_trace(m, x, **kw),
    "fisher_vector_product": lambda m, x, **kw: fisher_vector_product(
        m, x, torch.ones_like(x), **kw),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_take_a_device(name):
    model, x = build("mlp")
    call = ESTIMATORS[name]
    torch.testing.assert_close(call(model, x, device="cpu"), call(model, x), rtol=0, atol=0)
    assert call(model, x, device=torch.device("cpu")).device == torch.device("cpu")
    with pytest.raises(InputError, match=rf"^{name}: expected a device .* got 'tpu'\.$"):
        call(model, x, device="tpu")


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_refuse_cuda_without_a_gpu_in_one_line(name, no_gpu):
    model, x = build("mlp")
    with pytest.raises(NumericError, match=rf"^{name}: expected an available device, got "
                                           r"'cuda' but torch sees no CUDA device") as info:
        ESTIMATORS[name](model, x, device="cuda")
    assert "\n" not in str(info.value)


class _Recorder(nn.Module):
    """Wraps a model and records the precision settings it runs under."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(_settings())
        return self.inner(x)


def _settings():
    backends = torch.backends
    precisions = tuple(getattr(getattr(getattr(backends, name), kind), "fp32_precision",
                               None)
                       for name, kind in (("cuda", "matmul"), ("cudnn", "conv"),
                                          ("mkldnn", "matmul")))
    return (torch.is_autocast_enabled("cpu"), precisions)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_run_without_autocast_or_tf32_and_restore_the_settings(name):
    model, x = build("mlp")
    recorder = _Recorder(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = _settings()
        ESTIMATORS[name](recorder, x)
        assert _settings() == before
    assert recorder.seen
    for autocast, precisions in recorder.seen:
        assert autocast is False
        assert all(p in (None, "ieee") for p in precisions)


def test_a_callers_autocast_region_does_not_change_exact_values():
    model, x = build("cnn-batchnorm")
    model, x = model.float(), x.float()
    plain = fisher_eigenvalues(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fisher_eigenvalues(model, x)
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_full_precision_restores_settings_after_an_error():
    torch.set_float32_matmul_precision("medium")
    try:
        before = _settings()
        with pytest.raises(RuntimeError, match="boom"):
            with full_precision():
                assert all(p in (None, "ieee") for p in _settings()[1])
                raise RuntimeError("boom")
        assert _settings() == before
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("name", ["mlp", "cnn-batchnorm", "vit-mha", "residual"])
def test_replicated_rows_give_the_values_of_one_backward_pass_per_class(name, monkeypatch):
    model, x = build(name, batch=4)
    packed = fisher_eigenvalues(model, x)
    assert exact_module.replicas(_linearization(model, x), torch.device("cpu")) > 1
    monkeypatch.setitem(exact_module.TARGET_ROWS, "cpu", 1)   # one class per pass
    torch.testing.assert_close(packed, fisher_eigenvalues(model, x), rtol=1e-12, atol=0)
    reference = exact_fisher_spectrum(model, x).detach()[:, :packed.shape[1]]
    torch.testing.assert_close(packed / reference[:, :1], reference / reference[:, :1],
                               rtol=0, atol=1e-10)


def test_replicas_rule():
    model, x = build("mlp", batch=4)
    lin = _linearization(model, x)
    cpu = torch.device("cpu")
    assert exact_module.replicas(lin, cpu) == 4     # K - 1 = 4 copies, one pass
    lin_big = _linearization(model, x.repeat(20, 1))
    assert exact_module.replicas(lin_big, cpu) == 1  # 80 rows: large enough already


def test_replicas_on_cuda_fit_half_the_free_memory(monkeypatch):
    model, x = build("mlp", batch=4)
    lin = _linearization(model, x)
    lin.graph_bytes = 1000                       # as measured on a GPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (6000, 10 ** 9))
    # room for 3 copies; 4 classes to cover in ceil(4 / 3) = 2 passes: 2 copies each
    assert exact_module.replicas(lin, torch.device("cuda", 0)) == 2
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1999, 10 ** 9))
    assert exact_module.replicas(lin, torch.device("cuda", 0)) == 1


def _linearization(model, x):
    from numeric.fisher.operator import Linearization
    return Linearization(model, x, dtype=x.dtype, caller="test")


@pytest.mark.parametrize("target", [1, 16])
def test_lanczos_blocks_do_not_change_values(target, monkeypatch):
    monkeypatch.setitem(iterative_module.BLOCK_TARGET_ROWS, "cpu", target)
    model, x = build("vit-mha", batch=6)
    reference = exact_fisher_spectrum(model, x).detach()[:, :2]
    values, diagnostics = fisher_top_eigenvalue(
        model, x, "lanczos", k=2, return_diagnostics=True,
        generator=torch.Generator().manual_seed(0))
    assert diagnostics.block_size == (1 if target == 1 else 2)
    assert float(((values - reference) / reference).abs().max()) <= 1e-6


def test_gram_operator_rebuilds_for_the_rows_still_asked_for(monkeypatch):
    from numeric.fisher._validation import model_context
    from numeric.fisher.operator import Linearization

    built = []

    class Counting(Linearization):
        def __init__(self, model, x, **kwargs):
            built.append(x.shape[0])
            super().__init__(model, x, **kwargs)

    monkeypatch.setattr(iterative_module, "Linearization", Counting)
    model, x = build("mlp", batch=4)
    vectors = torch.randn(4, 2, 5, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))
    with model_context(model):
        full = Linearization(model, x, dtype=torch.float64, caller="test")
        expected = torch.stack([full.gram_product(vectors[:, j]) for j in range(2)], dim=1)
        operator = iterative_module.GramOperator(
            model, x, dtype=torch.float64, device=torch.device("cpu"), caller="test",
            block=2)
        every = operator(vectors, torch.arange(4))
        three = operator(vectors[[0, 1, 3]], torch.tensor([0, 1, 3]))   # not rebuilt
        two = operator(vectors[[1, 3]], torch.tensor([1, 3]))           # half: rebuilt
        one = operator(vectors[[3], :1], torch.tensor([3]))             # rebuilt, 1 vector
    assert built == [8, 4, 2]       # rows times the block of 2
    for got, rows, width in ((every, [0, 1, 2, 3], 2), (three, [0, 1, 3], 2),
                             (two, [1, 3], 2), (one, [3], 1)):
        torch.testing.assert_close(got, expected[rows, :width], rtol=1e-12, atol=1e-15)


def test_out_of_memory_in_the_packed_passes_falls_back_to_one_class_per_pass(monkeypatch):
    model, x = build("residual", batch=3)
    packed = fisher_eigenvalues(model, x)
    calls = []

    def out_of_memory(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(exact_module, "_replicated_vjps", out_of_memory)
    torch.testing.assert_close(fisher_eigenvalues(model, x), packed, rtol=1e-12, atol=0)
    assert calls == [1]
