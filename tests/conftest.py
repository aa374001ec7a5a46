import os

# The Triton interpreter must be chosen before Triton is first imported (kernel tests run on CPU).
os.environ.setdefault("TRITON_INTERPRET", "1")
# Never reach for the network from the test suite; tests that exercise downloads monkeypatch them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import collections
import importlib

import pytest
import torch

from tokenizer import MultiScaleVQVAE, VQVAEConfig

# Under pytest-xdist (`-n 2`, the README's test command) every worker takes its share of the cores:
# N workers each with an OpenMP pool of all cores spin against each other (a tiny training step gets
# 10-20x slower, see `one_thread`).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

TINY_VAE = dict(ch=32, ch_mult=(1, 1, 2, 2), z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4))  # 32 px


@pytest.fixture(scope="session", autouse=True)
def nextscale_cache(tmp_path_factory):
    """One NEXTSCALE_CACHE folder for the whole run, never the user's ~/.cache: the digits judge that
    `var demo`, `var eval --digits` and the judge tests use is trained once (seconds of CPU each time)
    and shared, and nothing a test writes outlives the run."""
    path = tmp_path_factory.mktemp("nextscale-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEXTSCALE_CACHE", str(path))
        yield path


@pytest.fixture
def mixers():
    """`var.MIXERS`, put back as it was after the test: for tests that `register_mixer` a mechanism of their own."""
    from var import MIXERS

    before = dict(MIXERS)
    yield MIXERS
    MIXERS.clear()
    MIXERS.update(before)


@pytest.fixture
def one_thread():
    """One intra-op thread for the training tests: on a shared 2-core machine OpenMP threads spin against
    other processes and a tiny training step gets 10-20x slower (measured: 1.1 s vs 19 s for a four-step
    tokenizer training test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_vae() -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(VQVAEConfig(**TINY_VAE)).eval()


# ----------------------------------------------------------------------------------------------
# Kernel test fixtures (tests/test_kernels_*.py)

# Tolerance of a Triton kernel against its PyTorch reference on the same inputs, per op family and
# dtype: keyword arguments of torch.testing.assert_close (the kernel tests import the table).
# Attention: both sides accumulate in fp32; fp16 rounds P and dS to fp16 for tl.dot, as in
# FlashAttention. Spatial ops and external attention: the references compute in fp32 and cast.
KERNEL_TOLERANCE = {
    ("attention", torch.float32): dict(atol=2e-5, rtol=1e-4),
    ("attention", torch.float16): dict(atol=5e-3, rtol=1e-2),
    ("misc", torch.float32): dict(atol=1e-4, rtol=1e-4),
    ("misc", torch.float16): dict(atol=1e-2, rtol=1e-2),
}


@pytest.fixture
def nan_poisoned_empty(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled floating tensors while the test runs, so an
    output element a kernel forgets to write fails the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


class _LoggedKernel:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` logs the name, then launches it."""

    def __init__(self, kernel, name: str, log: list[str]):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


class KernelLaunches(list):
    """The names of the Triton kernels launched, in order; ``counts()`` tallies them."""

    def counts(self) -> collections.Counter:
        return collections.Counter(self)


@pytest.fixture
def kernel_launches(monkeypatch):
    """``kernel_launches(*module_names)`` wraps every ``_*_kernel`` of those modules and returns the
    shared :class:`KernelLaunches` log, proving which kernels ran, forward and backward."""
    log = KernelLaunches()

    def watch(*module_names: str) -> KernelLaunches:
        for module_name in module_names:
            module = importlib.import_module(module_name)
            for name in dir(module):
                if name.startswith("_") and name.endswith("_kernel"):
                    monkeypatch.setattr(module, name, _LoggedKernel(getattr(module, name), name, log))
        return log

    return watch
