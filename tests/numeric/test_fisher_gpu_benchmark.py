"""``python -m benchmarks --gpu`` without a GPU: the CUDA rows say so, nothing else changes.

The measurements themselves need a GPU; what must hold everywhere is that the GPU mode
touches only its own section of RESULTS.md (and the header's GPU line), and that a CPU
machine gets an explicit "not run: no GPU" in every row instead of a crash or a stale
number.
"""

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.gpu import MODELS, TITLE

CPU_PART = """# fimbound benchmark results

- machine: x86_64
- GPU: NVIDIA Imaginary 9000

## White-box estimators vs the paper's recipe

| method | seconds |
|---|---|
| paper recipe | 1.0 |
"""

OLD_GPU = f"""{TITLE}

stale numbers from another machine

| model | quantity | samples/s |
|---|---|---|
| resnet18 | lambda_max, exact | 123.4 |
"""

LATER = """## Another section

kept as it is
"""


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _rows(text):
    start = text.index(TITLE)
    return [line for line in text[start:].splitlines()
            if line.startswith("| ") and "not run" in line]


@pytest.mark.parametrize("after", ["", LATER])
def test_gpu_mode_replaces_only_its_section(tmp_path, no_gpu, after):
    out = tmp_path / "RESULTS.md"
    out.write_text(CPU_PART + "\n" + OLD_GPU + ("\n" + after if after else ""))
    assert main(["--gpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(CPU_PART.replace("NVIDIA Imaginary 9000", "none"))
    assert "stale numbers" not in text and "123.4" not in text
    assert len(_rows(text)) == 6 * len(MODELS)
    assert all("| not run: no GPU |" in row for row in _rows(text))
    assert text.count(TITLE) == 1
    if after:
        assert text.endswith("\n\n" + LATER)


def test_gpu_mode_appends_its_section_when_missing(tmp_path, no_gpu):
    out = tmp_path / "RESULTS.md"
    out.write_text(CPU_PART)
    assert main(["--gpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.index(TITLE) > text.index("| paper recipe | 1.0 |")
    assert len(_rows(text)) == 6 * len(MODELS)
