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
