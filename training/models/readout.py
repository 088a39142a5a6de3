"""Per-recording full Gaussian readout: where each neuron looks in the feature map, and with which weights.

neuralpredictors' FullGaussian2d (gauss_type 'full', batch_sample=True, align_corners=True) with the
'cortex' grid_mean_predictor. While training, positions are sampled from N(mu, sigma sigma^T) per image
and read with grid_sample; at eval they are mu, read by bilinear interpolation written as four gathers
with indices and weights computed from mu, so ONNX export needs no GridSample (TOOLCHAIN.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.config import ReadoutConfig
from twin.errors import InvalidInput

__all__ = ["GaussianReadout", "bilinear_corners", "gather_readout", "normalize_coordinates"]


def normalize_coordinates(coordinates: np.ndarray) -> np.ndarray:
    """Cortical (x, y) per neuron, centred on the recording's mean and divided by the largest |value|.

    As FullGaussian2d.init_grid_predictor does with the first 2 columns of cell_motor_coordinates
    (one scale for both axes, so the cortical layout keeps its aspect ratio).
    """
    grid = np.asarray(coordinates, dtype=np.float64)[:, :2]  # (N, 2)
    grid = grid - grid.mean(axis=0, keepdims=True)
    extent = np.abs(grid).max()
    # All neurons at one point: nothing to scale (neuralpredictors would divide by zero).
    return (grid / extent if extent > 0 else grid).astype(np.float32)


def bilinear_corners(positions: Tensor, height: int, width: int) -> list[tuple[Tensor, Tensor]]:
    """The 4 bilinear neighbours of each position as (flat index into H*W, weight), each (B', N).

    positions (B', N, 2) are (x, y) in [-1, 1] with grid_sample's align_corners=True convention; a
    neighbour outside the map gets weight 0 (grid_sample's zero padding), its index clamped inside.
    """
    positions = positions.float()  # pixel coordinates need float32 precision, also under autocast
    x = (positions[..., 0] + 1) / 2 * (width - 1)  # (B', N) pixel column
    y = (positions[..., 1] + 1) / 2 * (height - 1)  # (B', N) pixel row
    x0, y0 = torch.floor(x), torch.floor(y)
    x1, y1 = x0 + 1, y0 + 1
    corners = []
    for xi, yi, weight in (
        (x0, y0, (x1 - x) * (y1 - y)),
        (x1, y0, (x - x0) * (y1 - y)),
        (x0, y1, (x1 - x) * (y - y0)),
        (x1, y1, (x - x0) * (y - y0)),
    ):
        inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
        index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long()
        corners.append((index, weight * inside))
    return corners


def gather_readout(features: Tensor, positions: Tensor, weights: Tensor) -> Tensor:
    """sum_c weights[n, c] * bilinear sample of features[b, c] at positions[b, n]: (B, N).

    The same numbers as grid_sample(align_corners=True) followed by the channel sum, written as one
    Gather per neighbour (F.embedding -> ONNX Gather) over a (B*H*W, C) table of feature vectors;
    each neighbour is reduced over channels at once so no (B, N, C) tensor is weighted or kept.
    features (B, C, H, W); positions (B or 1, N, 2); weights (N, C).
    """
    batch, channels, height, width = features.shape
    table = features.flatten(2).transpose(1, 2).reshape(batch * height * width, channels)  # (B*H*W, C)
    offset = torch.arange(batch, device=features.device)[:, None] * (height * width)  # (B, 1)
    out = features.new_zeros(())
    for index, weight in bilinear_corners(positions, height, width):
        rows = F.embedding(index + offset, table)  # (B, N, C)
        out = out + weight * torch.einsum("bnc,nc->bn", rows, weights)  # (B, N)
    return out


class GaussianReadout(nn.Module):
    """Linear readout (features . weights + bias, no nonlinearity) at one Gaussian position per neuron.

    in_shape: (C, H, W) of the core's features. coordinates: (N, 2 or 3) cortical positions -> mu
    predicted by an MLP 2 -> position_hidden -> ELU -> 2 -> tanh shared by the neurons (plus a penalized
    per-neuron offset with config.offset_weight); None -> mu learned directly, init U(-init_mu_range,
    init_mu_range), and n_neurons must be given.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        coordinates: Tensor | np.ndarray | None,
        config: ReadoutConfig,
        *,
        n_neurons: int | None = None,
    ):
        super().__init__()
        if len(in_shape) != 3 or any(int(s) < 1 for s in in_shape):
            raise InvalidInput(f"in_shape: {in_shape!r}; expected (channels, height, width), all >= 1")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.config = config
        channels = self.in_shape[0]
        if coordinates is not None:
            coords = np.asarray(
                coordinates.detach().cpu() if isinstance(coordinates, Tensor) else coordinates
            )
            if coords.ndim != 2 or coords.shape[1] < 2 or coords.shape[0] < 1:
                raise InvalidInput(f"coordinates: shape {coords.shape}; expected (neurons, 2 or 3)")
            if n_neurons is not None and coords.shape[0] != n_neurons:
                raise InvalidInput(f"coordinates: {coords.shape[0]} rows; expected n_neurons = {n_neurons}")
            if not np.all(np.isfinite(coords[:, :2])):
                raise InvalidInput("coordinates: contains NaN or inf; expected finite cortical positions")
            n_neurons = coords.shape[0]
        if n_neurons is None or n_neurons < 1:
            raise InvalidInput(f"n_neurons: {n_neurons!r}; expected >= 1 (or coordinates to count them)")
        self.n_neurons = n_neurons

        if coordinates is not None:
            self.register_buffer("source_grid", torch.from_numpy(normalize_coordinates(coords)))  # (N, 2)
            self.mu_transform: nn.Module | None = nn.Sequential(
                nn.Linear(2, config.position_hidden),
                nn.ELU(),
                nn.Linear(config.position_hidden, 2),
                nn.Tanh(),
            )
            self.register_parameter("_mu", None)
            if config.offset_weight is not None:  # each neuron's own step away from the map
                self.offset = nn.Parameter(torch.zeros(n_neurons, 2))
            else:
                self.register_parameter("offset", None)
        else:
            if config.offset_weight is not None:
                raise InvalidInput("offset_weight: set without coordinates; expected the cortical map's")
            self.register_parameter("offset", None)
            self.source_grid = None
            self.mu_transform = None
            self._mu = nn.Parameter(
                torch.empty(n_neurons, 2).uniform_(-config.init_mu_range, config.init_mu_range)
            )
        # Square root of each neuron's position covariance; 'full' Gaussians init U(-init_sigma, init_sigma).
        self.sigma = nn.Parameter(
            torch.empty(n_neurons, 2, 2).uniform_(-config.init_sigma, config.init_sigma)
        )
        self.features = nn.Parameter(torch.full((n_neurons, channels), 1.0 / channels))  # (N, C)
        self.bias = nn.Parameter(torch.zeros(n_neurons))  # (N,)

    def mu(self) -> Tensor:
        """Mean positions (N, 2) as (x, y) in [-1, 1], the positions used at eval."""
        if self.mu_transform is not None:
            mapped = self.mu_transform(self.source_grid)  # (N, 2)
            if self.offset is not None:
                mapped = mapped + self.offset
            return mapped.clamp(-1, 1)
        if self.training:
            with torch.no_grad():  # keep the learned positions on the map, as FullGaussian2d does
                self._mu.clamp_(-1, 1)
        return self._mu.clamp(-1, 1)

    def edge_fraction(self) -> float:
        """The share of neurons whose mean position lies within half a feature-map pixel of its border
        (align_corners: the border pixels' centres are at -1 and 1, pixels 2 / (size - 1) apart). Where
        positions that ran off while the core was still random end up, reading the border's features,
        and from where the gradient seldom brings them back (bench/README.md, "Readout start")."""
        _, height, width = self.in_shape
        with torch.no_grad():
            mu = self.mu().abs()
        near = torch.zeros(self.n_neurons, dtype=torch.bool, device=mu.device)
        for axis, size in ((0, width), (1, height)):  # mu is (x, y): x along the width
            if size > 1:
                near |= mu[:, axis] >= 1 - 1 / (size - 1)
        return float(near.float().mean())

    def position_parameters(self) -> list[nn.Parameter]:
        """What places the mean positions: the map's MLP and the offsets, or the free positions."""
        if self.mu_transform is None:
            return [self._mu]
        return list(self.mu_transform.parameters()) + ([] if self.offset is None else [self.offset])

    def forward(self, features: Tensor, shift: Tensor | None = None) -> Tensor:
        if tuple(features.shape[1:]) != self.in_shape:
            channels, height, width = self.in_shape
            raise InvalidInput(
                f"features: shape {tuple(features.shape)}; expected (B, {channels}, {height}, {width})"
            )
        if shift is not None and (shift.ndim != 2 or shift.shape[1] != 2):
            raise InvalidInput(f"shift: shape {tuple(shift.shape)}; expected (B, 2)")
        batch = features.shape[0]
        mu = self.mu()  # (N, 2)
        if self.training:
            noise = torch.randn(batch, self.n_neurons, 2, device=mu.device, dtype=mu.dtype)  # (B, N, 2)
            positions = (mu + torch.einsum("ncd,bnd->bnc", self.sigma, noise)).clamp(-1, 1)  # (B, N, 2)
            if shift is not None:
                positions = positions + shift[:, None, :]  # moved after the clamp, as in FullGaussian2d
            grid = positions[:, :, None, :]  # (B, N, 1, 2)
            sampled = F.grid_sample(features, grid, align_corners=True)[..., 0]  # (B, C, N)
            # multiply + sum: autograd's backward of this einsum (a bmm batched over neurons) was 4x slower
            return (sampled * self.features.t()).sum(1) + self.bias  # (B, N)
        positions = mu[None]  # (1, N, 2)
        if shift is not None:
            positions = positions + shift[:, None, :]  # (B, N, 2)
        return gather_readout(features, positions, self.features) + self.bias  # (B, N)

    def regularizer(self) -> Tensor:
        """l1_weight * sum |feature weights| (FullGaussian2d.regularizer, reduction 'sum' as trained), plus
        offset_weight * sum offset^2 with position offsets."""
        penalty = self.config.l1_weight * self.features.abs().sum()
        if self.offset is not None:
            penalty = penalty + self.config.offset_weight * self.offset.square().sum()
        return penalty

    def initialize_positions(self, positions: np.ndarray, clarity: np.ndarray, steps: int = 200) -> None:
        """Start the mean positions at `positions` (N, 2) in feature-map coordinates, trusting each
        neuron by its `clarity` (N,) in [0, 1].

        With the cortical map (use_coordinates), its MLP is fitted to the positions by a clarity-weighted
        robust (smooth L1) regression: the map is smooth over the cortex, so neurons found unclearly or
        wrongly are carried by their neighbours; with position offsets, each neuron's offset is then its
        clarity times its residual from the fitted map. Without the map, each position is pulled from the
        clarity-weighted mean position towards its own estimate by its clarity. Deterministic for a torch
        seed.
        """
        target = torch.as_tensor(np.asarray(positions), dtype=torch.float32).clamp(-0.95, 0.95)
        weight = torch.as_tensor(np.asarray(clarity), dtype=torch.float32).clamp(0, 1)
        if target.shape != (self.n_neurons, 2) or weight.shape != (self.n_neurons,):
            raise InvalidInput(
                f"positions, clarity: shapes {tuple(target.shape)}, {tuple(weight.shape)}; "
                f"expected ({self.n_neurons}, 2), ({self.n_neurons},)"
            )
        if not (torch.isfinite(target).all() and torch.isfinite(weight).all()):
            raise InvalidInput("positions, clarity: contain NaN or inf; expected finite values")
        if float(weight.sum()) <= 0:
            return  # nothing was found: keep the random start
        device = self.sigma.device
        target, weight = target.to(device), weight.to(device)
        if self.mu_transform is None:
            mean = (weight[:, None] * target).sum(0) / weight.sum()
            with torch.no_grad():
                self._mu.copy_(weight[:, None] * target + (1 - weight[:, None]) * mean)
            return
        params = list(self.mu_transform.parameters())
        # L-BFGS: a few hundred iterations fit this small MLP closer than thousands of Adam steps, in
        # a tenth of the time (0.4 s vs 3.8 s for 200 neurons on one thread).
        optimizer = torch.optim.LBFGS(
            params,
            lr=1,
            max_iter=steps,
            history_size=20,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            error = F.smooth_l1_loss(self.mu_transform(self.source_grid), target, reduction="none", beta=0.05)
            loss = (weight * error.sum(1)).sum() / weight.sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        for p in params:
            p.grad = None
        if self.offset is not None:
            with torch.no_grad():
                self.offset.copy_(weight[:, None] * (target - self.mu_transform(self.source_grid)))

    @torch.no_grad()
    def initialize_bias(self, mean: Tensor | np.ndarray) -> None:
        """bias = mean response per neuron, as neuralpredictors' Readout.initialize_bias (no link inverse)."""
        values = torch.as_tensor(
            np.asarray(mean.cpu() if isinstance(mean, Tensor) else mean), dtype=torch.float32
        )
        if values.shape != (self.n_neurons,):
            raise InvalidInput(f"mean: shape {tuple(values.shape)}; expected ({self.n_neurons},)")
        if not torch.all(torch.isfinite(values)):
            raise InvalidInput("mean: contains NaN or inf; expected finite mean responses")
        self.bias.copy_(values.to(self.bias))
