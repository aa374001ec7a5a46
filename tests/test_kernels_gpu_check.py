"""benchmarks/gpu_check.py, the one command for a GPU: checkable parts without a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # three script imports of torch and the model: ~10-40 s on 2 cores
def test_steps_fit_the_ten_minute_budget_and_use_existing_flags(tmp_path):
    steps = _module().steps(Path("/published/VAR"), tmp_path, tmp_path / "junit.xml")
    assert steps[0][0] == "pytest -m gpu"
    assert sum(budget for _, _, budget in steps) <= 10 * 60  # one call of the lent GPU machine
    for name, cmd, _ in steps[1:]:
        script = ROOT / cmd[1]
        sub = [cmd[2]] if not cmd[2].startswith("--") else []  # a subcommand's flags are in its own help
        # Every flag the step passes is one its script's argparse knows (the scripts are changed by others).
        help_text = subprocess.run(
            [sys.executable, str(script), *sub, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert help_text.returncode == 0, (name, help_text.stderr[-2000:])
        for flag in (a for a in cmd[2:] if a.startswith("--")):
            assert flag in help_text.stdout, f"{name}: {script.name} has no {flag}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_to_run_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--published", "/nonexistent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr
