"""The README's commands and snippets work as written.

Every bash/python block of README.md is followed by a marker `<!-- readme: KIND -->` (or is the test
command, which CI itself runs): `slow` blocks run here, in order, in a scratch folder (slow: they
train models); `gpu` and `network` blocks cannot run on a CPU-only machine without network, so the
fast test checks what it can of them (the commands exist, the config files exist).
"""

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
KINDS = {"slow", "gpu", "network", "setup"}


def blocks() -> list[tuple[str, str, str]]:
    """(language, code, kind) of every bash/python block; the test command's kind is 'test-command'."""
    out = []
    for m in re.finditer(r"```(bash|python)\n(.*?)```\n(<!-- (readme: (\w+)|/test-command) -->)?", README, re.S):
        lang, code, kind = m.group(1), m.group(2), m.group(5) or ("test-command" if m.group(3) else None)
        out.append((lang, code, kind))
    return out


def test_every_block_says_how_it_is_tested():
    found = blocks()
    assert len(found) >= 8
    for _lang, code, kind in found:
        assert kind in KINDS | {"test-command"}, f"README block without a <!-- readme: KIND --> marker:\n{code}"


def test_commands_and_configs_exist():
    names = {c.name for c in COMMANDS}
    for _, code, _ in blocks():
        for line in code.splitlines():
            for m in re.finditer(r"(?:^|&& |/)var (\S+)|-m app (\S+)", line):
                cmd = m.group(1) or m.group(2)
                assert cmd in names, f"README runs `var {cmd}`, which is not a command"
            for path in re.findall(r"--config (\S+)", line):
                assert (ROOT / path).is_file(), f"README names a missing config {path}"


def test_setup_commands_match_ci():
    """The first block installs and runs the demo; the test command is what .ci/run runs."""
    (setup,) = [code for _, code, kind in blocks() if kind == "setup"]
    (test_cmd,) = [code for _, code, kind in blocks() if kind == "test-command"]
    prefix = "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e '.[all]'"
    assert setup.strip() == f"{prefix} && .venv/bin/var demo"
    assert test_cmd.strip().startswith(prefix) and "pytest" in test_cmd
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def _wait_for(url: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {seconds} s")


@pytest.mark.slow
def test_slow_blocks_run_as_written(tmp_path):
    """Runs every `slow` block in order in a scratch folder (configs/ linked in): the digits pipeline,
    batch sampling and judging, then the web UI and the gradio_client snippet against it."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = None
    try:
        for lang, code, kind in blocks():
            if kind != "slow":
                continue
            if lang == "python":
                subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=600)
                continue
            for line in filter(None, (ln.strip() for ln in code.splitlines())):
                if line.startswith("var app"):
                    server = subprocess.Popen(
                        shlex.split(line),
                        cwd=tmp_path,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                    _wait_for("http://127.0.0.1:7860/config", server, 120)
                else:
                    subprocess.run(line, shell=True, cwd=tmp_path, env=env, check=True, timeout=900)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    assert (tmp_path / "runs" / "samples-digits.npz").is_file()


def test_results_page_is_generated_from_the_results(tmp_path):
    """benchmarks/results/README.md holds the generated tables (the README only links to it), and every
    block between its markers is what `python benchmarks/report.py --write` writes now."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import BEGIN, END, PAGE, RESULTS, table, write_results_page

    assert "benchmarks/results/README.md" in README and BEGIN not in README
    text = PAGE.read_text()
    assert text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip() == table()
    copy = tmp_path / "README.md"
    copy.write_text(text)
    write_results_page(copy, RESULTS)
    assert copy.read_text() == text, "benchmarks/results/README.md is stale: run `python benchmarks/report.py --write`"
    copy.write_text(text.replace("<!-- /scaling-table -->", ""))
    with pytest.raises(SystemExit, match="scaling-table"):
        write_results_page(copy, RESULTS)
