"""Chunking, sharding, resumable logs: the plumbing of long and distributed runs."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from numeric.errors import InputError
from numeric.runner import (ResultLog, RunContext, chunk_generator, chunks, evaluate_chunks,
                            gather_records, run_context, run_key)


@given(n=st.integers(0, 200), size=st.integers(1, 40), world=st.integers(1, 5))
def test_chunks_of_all_ranks_partition_the_samples(n, size, world):
    seen = []
    for rank in range(world):
        for chunk_id, indices in chunks(n, size, RunContext(rank=rank, world_size=world)):
            assert chunk_id % world == rank
            assert list(indices) == list(range(chunk_id * size,
                                               min((chunk_id + 1) * size, n)))
            seen.extend(indices)
    assert sorted(seen) == list(range(n))


def test_chunks_rejects_empty_chunk_size():
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        chunks(10, 0, RunContext())


def test_chunk_generator_depends_only_on_seed_and_chunk():
    a = torch.rand(5, generator=chunk_generator(3, 7))
    b = torch.rand(5, generator=chunk_generator(3, 7))
    c = torch.rand(5, generator=chunk_generator(3, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_run_key_changes_with_any_setting():
    assert run_key(a=1, b=[1, 2]) == run_key(b=[1, 2], a=1)
    assert run_key(a=1, b=[1, 2]) != run_key(a=1, b=[2, 1])


def test_log_ignores_a_line_cut_short_by_a_kill(tmp_path):
    log = ResultLog(tmp_path / "x.jsonl")
    log.append(0, [{"index": 0}])
    with log.path.open("a") as handle:
        handle.write('{"chunk": 1, "records": [{"ind')  # killed mid-write
    assert log.done() == {0: [{"index": 0}]}


def _compute_factory(calls):
    def compute(chunk_id, indices):
        calls.append(chunk_id)
        return [{"index": i, "value": i * i} for i in indices]
    return compute


def test_evaluate_chunks_resumes_without_recomputing(tmp_path):
    log = ResultLog(tmp_path / "run.jsonl")
    first_calls = []
    compute = _compute_factory(first_calls)
    # a run that was killed after its first chunk
    log.append(0, compute(0, range(0, 4)))
    calls = []
    records = evaluate_chunks(_compute_factory(calls), 10, chunk_size=4, ctx=RunContext(),
                              log=log)
    assert calls == [1, 2]
    assert [r["index"] for r in gather_records(records, RunContext())] == list(range(10))
    assert len(log.path.read_text().splitlines()) == 3
    again = []
    evaluate_chunks(_compute_factory(again), 10, chunk_size=4, ctx=RunContext(), log=log)
    assert again == []


def test_log_lines_are_json(tmp_path):
    log = ResultLog(tmp_path / "deep" / "run.jsonl")
    log.append(2, [{"index": 8, "x": 1.5}])
    assert json.loads(log.path.read_text()) == {"chunk": 2, "records": [{"index": 8, "x": 1.5}]}


def test_distributed_flag_without_torchrun_is_an_error(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="torchrun launch"):
        run_context("cpu", distributed=True)


def test_missing_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA device"):
        run_context("cuda")


@pytest.mark.parametrize("device", ["tpu", "meta", "xla", "cuda:x", "cpu:1", ""])
def test_unusable_devices_are_refused_naming_the_option(device):
    with pytest.raises(InputError, match="^--device: expected a device"):
        run_context(device)


@pytest.mark.parametrize("device", [None, "auto", "cpu", "CPU", "cpu:0"])
def test_cpu_and_auto_devices(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_context(device).device == torch.device("cpu")


def test_a_log_of_other_results_is_refused_not_mixed(tmp_path):
    path = tmp_path / "run.jsonl"
    ResultLog(path, header={"weights": "aaaa"}).append(0, [{"index": 0}])
    assert ResultLog(path, header={"weights": "aaaa"}).done() == {0: [{"index": 0}]}
    with pytest.raises(InputError, match="refusing to mix"):
        ResultLog(path, header={"weights": "bbbb"}).done()
    assert path.read_text().splitlines()[0] == '{"header": {"weights": "aaaa"}}'


def test_reading_a_log_needs_no_torch():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "from numeric.runner import ResultLog, run_key, chunks, RunContext\n"
            "print(len(chunks(10, 4, RunContext())), run_key(a=1))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "3"
