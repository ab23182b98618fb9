"""The command line's contract: exit codes, one-line errors, --debug, Ctrl-C, no torch.

0 done, 2 the user's mistake (one line), 3 a soundness violation, 1 a bug (one line that
says so and how to see the traceback), 130 interrupted; ``--help``, ``rank`` and
``derive GRAPH.json`` run in an interpreter where ``import torch`` fails.
"""

import json
import subprocess
import sys

import pytest

import bounds
from numeric import cli
from numeric.cli import (EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNSOUND, EXIT_USAGE,
                         main)
from numeric.commands import check as check_command
from numeric.commands import rank as rank_command
from numeric.errors import UnsoundBoundError


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _deep_failure():
    """An error raised outside the command modules: a bug, not the user's mistake."""
    return {}["missing"]


def test_success_and_the_epilog_documents_every_status(capsys):
    assert main(["rank", "--families", "vgg", "resnet"]) == EXIT_OK
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for status in ("0 done", "2 a mistake in the input", "3 a soundness violation",
                   "1 an internal error", "--debug", "130 interrupted"):
        assert status in " ".join(out.split())


@pytest.mark.parametrize("argv", [["rank", "--families", "lenet"],
                                  ["rank", "--value", "h=-1", "--families", "vgg16"],
                                  ["derive", "missing.json"]],
                         ids=["unknown-family", "negative-value", "missing-file"])
def test_user_mistakes_exit_2_with_one_line(argv, capsys):
    assert main(argv) == EXIT_USAGE
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"fimbound {argv[0]}: error: ")


@pytest.mark.parametrize("argv", [["rank", "--bogus"], ["nonsense"], ["rank", "--value", "h"]],
                         ids=["unknown-option", "unknown-command", "bad-value-syntax"])
def test_parser_errors_are_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "error:" in err[0] and "--help" in err[0]


def test_internal_error_is_one_line_that_says_it_is_a_bug(monkeypatch, capsys):
    monkeypatch.setattr(rank_command, "run", lambda args: _deep_failure())
    assert main(["rank"]) == EXIT_BUG
    err = _lines(capsys.readouterr().err)
    assert err == ["fimbound: internal error (KeyError: 'missing'); this is a bug — rerun "
                   "with --debug for the traceback"]
    for argv in (["--debug", "rank"], ["rank", "--debug"]):
        with pytest.raises(KeyError, match="missing"):
            main(argv)


def test_value_error_deep_inside_is_a_bug_not_bad_input(monkeypatch, capsys):
    def figure_step(args):
        return json.loads("not json")  # a ValueError raised in another module
    monkeypatch.setattr(rank_command, "run", figure_step)
    assert main(["rank", "--json"]) == EXIT_BUG
    captured = capsys.readouterr()
    assert json.loads(captured.out)["type"] == "JSONDecodeError"
    assert "internal error" in captured.err


def test_soundness_violation_exits_3(monkeypatch, capsys):
    def unsound(args):
        raise UnsoundBoundError("fisher_bound: 1.0 is below the measured 2.0 at row 0\n\n"
                                "While executing %linear")
    monkeypatch.setattr(rank_command, "run", unsound)
    assert main(["rank"]) == EXIT_UNSOUND
    assert _lines(capsys.readouterr().err) == [
        "fimbound rank: soundness violation: fisher_bound: 1.0 is below the measured 2.0 "
        "at row 0"]


def test_interrupt_exits_130_and_says_a_rerun_resumes(monkeypatch, capsys, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(rank_command, "run", interrupted)
    assert main(["rank"]) == EXIT_INTERRUPTED
    assert _lines(capsys.readouterr().err) == ["fimbound rank: interrupted."]
    monkeypatch.setattr(check_command, "run", interrupted)
    argv = ["check", "--model", "fimbound:vgg", "--data", "digits", "--out", str(tmp_path)]
    assert main(argv) == EXIT_INTERRUPTED
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "run the same command again to resume where it stopped" in err[0]


def test_missing_third_party_package_is_the_users_environment(monkeypatch, capsys):
    def needs_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    monkeypatch.setattr(rank_command, "run", needs_torch)
    assert main(["rank"]) == EXIT_USAGE
    assert "needs the Python package 'torch'" in capsys.readouterr().err


def test_every_command_is_offered():
    assert set(cli._available_commands()) == set(cli.COMMANDS)


# --------------------------------------------------------------------------- without torch

_BLOCK_TORCH = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
                "from numeric.cli import main; sys.exit(main(sys.argv[1:]))")


def _without_torch(*argv):
    return subprocess.run([sys.executable, "-c", _BLOCK_TORCH, *argv], capture_output=True,
                          text=True)


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in cli.COMMANDS)],
                         ids=lambda argv: " ".join(argv))
def test_help_runs_without_torch(argv):
    result = _without_torch(*argv)
    assert result.returncode == 0, result.stderr
    assert "usage: fimbound" in result.stdout


def test_rank_and_derive_of_a_graph_file_run_without_torch(tmp_path):
    result = _without_torch("rank", "--families", "vgg16", "resnet18", "--value", "h=1.2",
                            "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["order"] == ["vgg16", "resnet18"]
    path = tmp_path / "vgg.json"
    bounds.write_graph(bounds.vgg(2, shared=True), path)
    result = _without_torch("derive", str(path), "--value", "h=1.5", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["lipschitz"] == 2.25


def test_a_model_without_torch_is_one_line_exit_2():
    result = _without_torch("derive", "--model", "fimbound:vgg")
    assert result.returncode == EXIT_USAGE
    err = _lines(result.stderr)
    assert len(err) == 1 and "needs the Python package 'torch'" in err[0]
