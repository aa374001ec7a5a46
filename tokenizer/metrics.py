"""Reconstruction metrics on images in [0, 1]: PSNR and SSIM (Wang et al. 2004), per image.

Small, dependency-free versions: the training extra does not pull torchmetrics. The tests compare
them with torchmetrics where it is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def psnr(x_B3HW: torch.Tensor, y_B3HW: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, [B]."""
    mse_B = (x_B3HW.float() - y_B3HW.float()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse_B.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    x_B3HW: torch.Tensor, y_B3HW: torch.Tensor, data_range: float = 1.0, kernel: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-image SSIM, [B]: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, valid region only.

    The window shrinks to the image size (odd) for images smaller than 11 px.
    """
    x, y = x_B3HW.float(), y_B3HW.float()
    C = x.shape[1]
    kernel = min(kernel, x.shape[-1] - (1 - x.shape[-1] % 2), x.shape[-2] - (1 - x.shape[-2] % 2))
    g = _gaussian_window(kernel, sigma, x.device, x.dtype)
    w_C1KK = (g[:, None] * g[None, :]).expand(C, 1, kernel, kernel)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w_C1KK, groups=C)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)
