"""The shared core: images -> feature maps, one for all recordings.

kinds "cnn" / "linear" match neuralpredictors' Stacked2dCore as the SENSORIUM 2022 baseline configures
it (stack=-1: only the last layer's features go to the readout; depth_separable=True; LaplaceL2norm on
the first layer). kind "resnet" keeps that first layer and stacks residual blocks after it, as the
SENSORIUM winners' ResNet-style cores did. Any kind can divide its first layer's linear responses by
their pooled local energy (`normalization`, DivisiveNormalization).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.config import CoreConfig

__all__ = ["Core", "DivisiveNormalization", "ResidualBlock", "laplace_l2norm"]

# neuralpredictors.regularizers.laplace(): the 5-point discrete Laplacian.
_LAPLACE = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def laplace_l2norm(weight: Tensor) -> Tensor:
    """sum(laplace(w)^2) / sum(w^2) over all 2-D kernels of a conv weight (O, I, k, k).

    neuralpredictors' LaplaceL2norm with avg=False and padding 1 (laplace_padding=None, as the SENSORIUM
    baseline sets it): zero-padded, so only the zero kernel is free; scale-invariant; smooth kernels are
    cheap.
    """
    out_ch, in_ch, kh, kw = weight.shape
    kernels = weight.reshape(out_ch * in_ch, 1, kh, kw)  # (O*I, 1, k, k)
    laplace = _LAPLACE.to(weight)[None, None]  # (1, 1, 3, 3)
    return F.conv2d(kernels, laplace, padding=1).pow(2).sum() / kernels.pow(2).sum()


def _inverse_softplus(value: float) -> float:
    return float(np.log(np.expm1(value)))


class DivisiveNormalization(nn.Module):
    """y_c = x_c / sqrt(beta_c + sum_d gamma_cd (k_c * x_d^2)): (B, C, H, W) -> (B, C, H, W).

    Each channel is divided by the local energy of all channels, pooled over a kernel x kernel window:
    the generalized divisive normalization of Balle et al. (2016), with the spatial pool with which Burg
    et al. (2021) modelled mouse V1 (normalization pools that reach beyond the receptive field, broadly
    tuned across channels). gamma (C, C), the pool k_c (one kernel x kernel map per channel, separable:
    a column times a row, 2 x kernel taps per pixel instead of kernel^2) and beta (C,) are softplus of
    free parameters, so the pool is non-negative and beta positive (+ 1e-3). At the start gamma is 1/C,
    k_c a box of sum 1 and beta 1: unit-variance inputs are divided by about sqrt(2). The pool is
    zero-padded: near the border it sees less energy, as the image sees mean luminance there.
    """

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.raw_gamma = nn.Parameter(torch.full((channels, channels), _inverse_softplus(1.0 / channels)))
        start = _inverse_softplus(1.0 / kernel)
        self.raw_pool_y = nn.Parameter(torch.full((channels, 1, kernel, 1), start))
        self.raw_pool_x = nn.Parameter(torch.full((channels, 1, 1, kernel), start))
        self.raw_beta = nn.Parameter(torch.full((channels,), _inverse_softplus(1.0)))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        gamma = F.softplus(self.raw_gamma)[:, :, None, None].to(x.dtype)  # (C, C, 1, 1)
        beta = (F.softplus(self.raw_beta) + 1e-3)[None, :, None, None].to(x.dtype)  # (1, C, 1, 1)
        energy = F.conv2d(x.square(), gamma)  # (B, C, H, W): channels mixed
        half = self.kernel // 2
        for raw, padding in ((self.raw_pool_y, (half, 0)), (self.raw_pool_x, (0, half))):  # pooled in space
            energy = F.conv2d(energy, F.softplus(raw).to(x.dtype), padding=padding, groups=channels)
        return x * torch.rsqrt(beta + energy)


class DepthSeparableConv2d(nn.Sequential):
    """1x1 conv in->out, depthwise k x k 'same' conv, 1x1 conv out->out (neuralpredictors' order)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.in_depth_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.spatial_conv = nn.Conv2d(
            out_channels, out_channels, kernel, padding=kernel // 2, groups=out_channels, bias=False
        )
        self.out_depth_conv = nn.Conv2d(out_channels, out_channels, 1, bias=False)


def hidden_conv(config: CoreConfig) -> nn.Module:
    """A channels -> channels hidden_kernel 'same' conv without bias, depthwise-separable if asked."""
    c = config
    if c.depthwise:
        return DepthSeparableConv2d(c.channels, c.channels, c.hidden_kernel)
    return nn.Conv2d(c.channels, c.channels, c.hidden_kernel, padding=c.hidden_kernel // 2, bias=False)


class ResidualBlock(nn.Module):
    """conv-BN-ELU-dropout-conv-BN, + x (if residual), ELU: (B, C, H, W) -> (B, C, H, W).

    Dropout sits between the two convs, as in wide ResNets, so the skip path is never dropped.
    """

    def __init__(self, config: CoreConfig):
        super().__init__()
        c = config
        layers: list[nn.Module] = [
            hidden_conv(c),
            nn.BatchNorm2d(c.channels, momentum=c.batch_norm_momentum),
            nn.ELU(),
        ]
        if c.dropout > 0:
            layers.append(nn.Dropout(c.dropout))
        layers += [hidden_conv(c), nn.BatchNorm2d(c.channels, momentum=c.batch_norm_momentum)]
        self.branch = nn.Sequential(*layers)
        self.residual = c.residual

    def forward(self, features: Tensor) -> Tensor:
        out = self.branch(features)  # (B, C, H, W)
        return F.elu(features + out if self.residual else out)


class Core(nn.Module):
    """Stacked conv core. kind "cnn": conv -> batch norm -> ELU per layer; kind "linear": no ELU;
    kind "resnet": the same first layer, then layers-1 ResidualBlocks.

    Convs have no bias: the batch norm after each one makes it redundant. The linear core keeps the
    batch norm, as the reference LN baseline does (Stacked2dCore(linear=True) drops only the ELUs);
    at eval it is an affine map, so core + readout is linear.
    Optional for "cnn" / "linear" (not in the baseline): dropout after every hidden layer, identity
    skips around them. Optional for every kind: divisive normalization of the first layer after its
    batch norm (before its ELU); a "linear" core with it is no longer linear (it is then the divisive
    normalization model of Burg et al. 2021 with a deeper linear stage).
    """

    def __init__(self, config: CoreConfig):
        super().__init__()
        self.config = config
        c = config
        padding = c.input_kernel // 2 if c.pad_input else 0
        first: list[nn.Module] = [
            nn.Conv2d(
                c.in_channels, c.channels, c.input_kernel, stride=c.input_stride, padding=padding, bias=False
            ),
            nn.BatchNorm2d(c.channels, momentum=c.batch_norm_momentum),
        ]
        if c.normalization:
            first.append(DivisiveNormalization(c.channels, c.normalization_kernel))
        if c.kind != "linear":
            first.append(nn.ELU())
        self.input_layer = nn.Sequential(*first)
        self.hidden_layers = nn.ModuleList()
        for _ in range(c.layers - 1):
            if c.kind == "resnet":
                self.hidden_layers.append(ResidualBlock(c))
                continue
            layer: list[nn.Module] = [
                hidden_conv(c),
                nn.BatchNorm2d(c.channels, momentum=c.batch_norm_momentum),
            ]
            if c.kind == "cnn":
                layer.append(nn.ELU())
            if c.dropout > 0:
                layer.append(nn.Dropout(c.dropout))
            self.hidden_layers.append(nn.Sequential(*layer))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal conv weights (neuralpredictors' Core.init_conv); batch norm at its defaults."""
        for module in self.modules():  # DivisiveNormalization keeps its own start
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)

    @property
    def out_channels(self) -> int:
        return self.config.channels

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H', W') of the features for (height, width) images; hidden layers keep the size."""
        c = self.config
        padding = c.input_kernel // 2 if c.pad_input else 0
        out_h = (height + 2 * padding - c.input_kernel) // c.input_stride + 1
        out_w = (width + 2 * padding - c.input_kernel) // c.input_stride + 1
        return c.channels, out_h, out_w

    def feature_position(self, pixels: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """Input pixel positions (..., 2) as (x, y) -> the readout's feature-map coordinates in [-1, 1]
        (grid_sample's align_corners=True convention) of the features (H', W') computed there."""
        c = self.config
        padding = c.input_kernel // 2 if c.pad_input else 0
        _, out_h, out_w = self.output_shape(*image_shape)
        index = (np.asarray(pixels, dtype=np.float64) + padding - (c.input_kernel - 1) / 2) / c.input_stride
        size = np.array([out_w, out_h], dtype=np.float64)
        return np.where(size > 1, index / np.maximum(size - 1, 1) * 2 - 1, 0.0).astype(np.float32)

    def pixel_position(self, positions: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """The inverse of feature_position: feature-map coordinates (..., 2) in [-1, 1] -> input (x, y)."""
        c = self.config
        padding = c.input_kernel // 2 if c.pad_input else 0
        _, out_h, out_w = self.output_shape(*image_shape)
        index = (np.asarray(positions, dtype=np.float64) + 1) / 2 * np.array([out_w - 1, out_h - 1])
        return index * c.input_stride - padding + (c.input_kernel - 1) / 2

    def forward(self, images: Tensor) -> Tensor:
        return self.layer_outputs(images)[-1]  # (B, C, H', W')

    def layer_outputs(self, images: Tensor) -> list[Tensor]:
        """Every layer's output (B, C, H', W'), the first conv's first; the readout reads the last."""
        features = self.input_layer(images)  # (B, C, H', W')
        outputs = [features]
        for layer in self.hidden_layers:
            if self.config.kind == "resnet":
                features = layer(features)  # (B, C, H', W'), skips inside the block
            else:
                out = layer(features)  # (B, C, H', W')
                features = features + out if self.config.residual else out
            outputs.append(features)
        return outputs

    def regularizer(self) -> Tensor:
        """laplace_weight * LaplaceL2norm of the first conv's kernels (Stacked2dCore.regularizer)."""
        return self.config.laplace_weight * laplace_l2norm(self.input_layer[0].weight)
