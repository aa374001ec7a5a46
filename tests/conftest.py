import os

# The Triton interpreter must be chosen before Triton is first imported (kernel tests run on CPU).
os.environ.setdefault("TRITON_INTERPRET", "1")
# Never reach for the network from the test suite; tests that exercise downloads monkeypatch them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tokenizer import MultiScaleVQVAE, VQVAEConfig

TINY_VAE = dict(ch=32, ch_mult=(1, 1, 2, 2), z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4))  # 32 px


@pytest.fixture
def tiny_vae() -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(VQVAEConfig(**TINY_VAE)).eval()
