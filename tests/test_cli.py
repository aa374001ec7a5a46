import shutil
import subprocess
import sys

import pytest

from app.cli import COMMANDS, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: var" in out
    for cmd in COMMANDS:
        assert cmd.name in out


def test_no_arguments_prints_help(capsys):
    assert main([]) == 0
    assert "usage: var" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-command"])
    assert exit_.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_console_script_installed():
    exe = shutil.which("var") or shutil.which("var", path=str(__import__("pathlib").Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the `var` console script is not installed (run `pip install -e .`)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: var" in out.stdout


def _failing_sample(monkeypatch, err: BaseException):
    import var.batch_sample

    def run(args):
        raise err

    monkeypatch.setattr(var.batch_sample, "run", run)
    return ["sample", "--model", "m", "--out", "o"]


@pytest.mark.parametrize(
    "err, status, line",
    [
        (__import__("scaffold").UserError("bad value in x.yaml"), 2, "var sample: error: bad value in x.yaml"),
        (OSError(28, "No space left on device", "/full/out.png"), 2, "var sample: error: disk full while writing "
         "/full/out.png ("),
        (PermissionError(13, "Permission denied", "/ro/x"), 2, "var sample: error: Permission denied: /ro/x"),
        (ZeroDivisionError("division by zero"), 1, "var sample: internal error: ZeroDivisionError: division by zero; "
         "rerun with --debug (or NEXTSCALE_DEBUG=1) for the traceback"),
        (KeyboardInterrupt(), 130, "var sample: interrupted"),
    ],
    ids=["user-error", "disk-full", "permission", "bug", "interrupt"],
)  # fmt: skip
def test_every_failure_is_one_line_without_traceback(monkeypatch, capsys, err, status, line):
    monkeypatch.delenv("NEXTSCALE_DEBUG", raising=False)
    assert main(_failing_sample(monkeypatch, err)) == status
    out = capsys.readouterr().err.strip()
    assert out.startswith(line) and "\n" not in out and "Traceback" not in out


@pytest.mark.parametrize("how", ["flag-after", "flag-before", "env"])
def test_debug_prints_the_traceback(monkeypatch, capsys, how):
    argv = _failing_sample(monkeypatch, ZeroDivisionError("division by zero"))
    monkeypatch.delenv("NEXTSCALE_DEBUG", raising=False)
    if how == "env":
        monkeypatch.setenv("NEXTSCALE_DEBUG", "1")
    argv = {"flag-after": [*argv, "--debug"], "flag-before": ["--debug", *argv], "env": argv}[how]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: division by zero" in err
    assert err.strip().splitlines()[-1] == "var sample: internal error: ZeroDivisionError: division by zero"
