"""Extra input channels computed from the image inside the model, so an exported graph takes only images.

SENSORIUM 2022 winners fed their cores more than the raw image: Sobel gradients and a centred copy
(SENSORIUM.md §5). Computing them here, from fixed kernels, keeps the data pipeline, the checkpoints and
the served signature unchanged: a model with these channels still takes images (B, 1, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InputChannels", "centered_copy", "sobel_gradients"]

# Sobel kernels divided by 8, so a ramp of slope a per pixel has gradient a.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
# An image with (nearly) no contrast is centred but not blown up: its std is floored at sqrt(eps).
CENTER_EPS = 1e-5


def sobel_gradients(images: Tensor, kernels: Tensor) -> Tensor:
    """(B, 1, H, W) -> (B, 2, H, W) horizontal and vertical gradients; kernels (2, 1, 3, 3).

    Edge-replicated padding: a zero border would be a strong false edge on z-scored images.
    """
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
    return F.conv2d(padded, kernels)  # (B, 2, H, W)


def centered_copy(images: Tensor) -> Tensor:
    """(B, 1, H, W): each image minus its own mean, divided by its own std (ddof 0)."""
    mean = images.mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    var = (images - mean).pow(2).mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (images - mean) * torch.rsqrt(var + CENTER_EPS)


class InputChannels(nn.Module):
    """images (B, 1, H, W) -> (B, 1 + centered + 2 * gradients, H, W): [image, centred copy, d/dx, d/dy].

    Parameter-free; the Sobel kernels are a non-persistent buffer (they follow .to(device) but are
    not stored in state dicts, so adding them did not change any checkpoint's keys).
    """

    def __init__(self, *, gradients: bool, centered: bool):
        super().__init__()
        self.gradients = gradients
        self.centered = centered
        kernels = torch.stack([_SOBEL_X, _SOBEL_X.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
        self.register_buffer("sobel_kernels", kernels, persistent=False)

    @property
    def out_channels(self) -> int:
        return 1 + int(self.centered) + 2 * int(self.gradients)

    def forward(self, images: Tensor) -> Tensor:
        if not (self.centered or self.gradients):
            return images
        channels = [images]
        if self.centered:
            channels.append(centered_copy(images))  # (B, 1, H, W)
        if self.gradients:
            channels.append(sobel_gradients(images, self.sobel_kernels.to(images.dtype)))  # (B, 2, H, W)
        return torch.cat(channels, dim=1)  # (B, C, H, W)
