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


def seeded_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic non-trivial weights in sorted-key order; buffers keep their values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sorted(model.state_dict().items()):
        if k == "lvl_1L" or k.endswith(("zero_k_bias", "ema_vocab_hit_SV")):
            out[k] = v.clone()
            continue
        r = torch.randn(v.shape, generator=g)
        if k.endswith("embedding.weight"):
            out[k] = r
        elif "norm" in k and v.ndim == 1 and k.endswith(".weight"):
            out[k] = 1 + 0.1 * r
        elif "scale_mul" in k:
            out[k] = 0.5 * r
        elif v.ndim == 1:
            out[k] = 0.1 * r
        else:
            out[k] = r / v[0].numel() ** 0.5
    return out


def full_disk(monkeypatch, room: int = 100) -> None:
    """Files written through `scaffold.io` fail as on a full disk: ENOSPC once `room` bytes are written.

    (A real full filesystem, e.g. a small tmpfs, needs root to mount; this is the same error at the same call.)
    """
    import builtins
    import errno
    import os

    class FullFile:
        def __init__(self, f):
            self.f, self.left = f, room

        def write(self, data) -> int:
            data = memoryview(data).cast("B")
            n = min(len(data), self.left)
            self.f.write(data[:n])
            self.left -= n
            if n < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return n

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def full_open(*args, **kwargs) -> FullFile:
        return FullFile(builtins.open(*args, **kwargs))  # closed by the caller's `with`

    monkeypatch.setattr("scaffold.io.open", full_open, raising=False)
