"""Shared test helpers: tiny VAR configs with non-trivial weights."""

import torch

from var import VAR, VARConfig

TINY_VAR = dict(depth=2, num_classes=10, patch_nums=(1, 2, 3, 4), vocab_size=64, c_vae=8)
L_TINY = 1 + 4 + 9 + 16


def randomise(model: VAR, seed: int = 0) -> VAR:
    """Non-trivial weights everywhere: the published init leaves AdaLN gates at ~1e-5 and the head at 0.02."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "scale_mul" in name else 0.1))
    return model


def tiny_var(seed: int = 0, **overrides) -> VAR:
    """A tiny VAR (depth 2, 4 scales, V=64) in eval mode with `randomise`d weights."""
    torch.manual_seed(0)
    return randomise(VAR(VARConfig(**{**TINY_VAR, **overrides})), seed).eval()
