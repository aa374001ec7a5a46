"""Golden numbers computed by the published VAR code (FoundationVision/VAR, models/var.py) at a tiny size.

They were produced by running the published VAR and VQVAE from a local copy (not part of this
project) with the weights of `helpers.seeded_weights`, on the same inputs; our code gave bitwise
identical logits and images there.
"""

import pytest
import torch
from helpers import seeded_weights

from kernels import CPU_GEMM_ENV_VAR
from tokenizer import MultiScaleVQVAE, VQVAEConfig
from var import VAR, VARConfig, sample

PATCH_NUMS = (1, 2, 3, 4)
CONFIG = VARConfig(depth=2, num_classes=10, patch_nums=PATCH_NUMS, vocab_size=64, c_vae=8)


def models() -> tuple[VAR, MultiScaleVQVAE]:
    var = VAR(CONFIG).eval()
    var.load_state_dict(seeded_weights(var, 4321))
    vae = MultiScaleVQVAE(VQVAEConfig(vocab_size=64, z_channels=8, ch=32, patch_nums=PATCH_NUMS)).eval()
    vae.load_state_dict(seeded_weights(vae, 1234))
    return var, vae


GOLDEN_LOGITS_SUM, GOLDEN_LOGITS_ABS = 104.00289319269359, 3277.8635952174664
GOLDEN_LOGITS_ROW = [
    -0.9993225932121277,
    1.6736302375793457,
    -0.7942489385604858,
    0.6985670924186707,
    -1.2173714637756348,
    -1.0709118843078613,
]  # logits[1, 17, :6]
# autoregressive_infer_cfg(B=2, label_B=[1, 10], g_seed=7, cfg=1.5, top_k=1, top_p=0.0)
GOLDEN_GREEDY_IDX = [
    [[33], [10]],
    [[25, 25, 25, 25], [33, 27, 19, 33]],
    [[25, 25, 25, 25, 25, 25, 25, 25, 25], [33, 33, 46, 33, 33, 33, 19, 33, 33]],
    [
        [25, 25, 33, 25, 25, 33, 33, 25, 25, 33, 33, 25, 25, 33, 25, 25],
        [25, 33, 33, 46, 25, 33, 33, 33, 33, 25, 25, 33, 19, 43, 43, 43],
    ],
]
GOLDEN_GREEDY_IMG_SUM = 12476.716544598341

# inference's fp32 linear layers run on oneDNN or on BLAS (var.linear): both must reproduce the published code
gemm = pytest.mark.parametrize("cpu_gemm", ["onednn", "blas"], indirect=True)


@pytest.fixture
def cpu_gemm(request, monkeypatch):
    monkeypatch.setenv(CPU_GEMM_ENV_VAR, request.param)


@gemm
def test_teacher_forcing_logits_match_published_code(cpu_gemm):
    var, _ = models()
    x = torch.randn(2, 29, 8, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        logits = var(torch.tensor([1, 10]), x)
    assert logits.double().sum().item() == pytest.approx(GOLDEN_LOGITS_SUM, abs=1e-3)
    assert logits.double().abs().sum().item() == pytest.approx(GOLDEN_LOGITS_ABS, rel=1e-6)
    assert logits[1, 17, :6].tolist() == pytest.approx(GOLDEN_LOGITS_ROW, abs=1e-5)


@gemm
def test_greedy_sampling_matches_published_code(cpu_gemm):
    var, vae = models()
    imgs, idx = sample(var, vae, [1, 10], cfg=1.5, top_k=1, top_p=0.0, seed=7, return_tokens=True)
    assert [t.tolist() for t in idx] == GOLDEN_GREEDY_IDX
    assert imgs.double().sum().item() == pytest.approx(GOLDEN_GREEDY_IMG_SUM, rel=1e-5)
