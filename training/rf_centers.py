"""Where each neuron's receptive field is, estimated from a recording's training trials before training.

The Gaussian readout must find every neuron's position in the feature map by gradient descent, starting
from a random map of cortical coordinates to positions; on few trials it can fail to find them at all
(the whole readout then never learns). This estimate gives it a data-driven start: correlate each
neuron's responses with local, oriented contrast energy at every pixel (quadrature Gabor energy, 4
orientations x 3 periods, and the pixel values themselves for phase-sensitive cells), sum the squared
correlations over those maps, and take the peak. Phase-invariant (complex) cells show up in the energy
maps, which a spike-triggered average of the pixels alone would miss.

All arrays are at the model's input resolution; positions are (x, y) pixel coordinates (column, row).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["ENERGY_PERIODS", "estimate_centers"]

ENERGY_PERIODS = (4.0, 8.0, 16.0)  # pixels per cycle of the Gabor pairs (SENSORIUM-scale V1 at 36 x 64)
ORIENTATIONS = 4
MAX_TRIALS = 4000  # a subsample (evenly spaced) bounds the cost on long recordings
NULL_NEURONS = 128  # neurons whose shuffled responses make the null of the clarity


def _gabor_pairs(height: int, width: int) -> Tensor:
    """Fourier transforms of even/odd Gabor pairs on the zero-padded grid: (F, 2, Hp, Wp // 2 + 1)."""
    hp, wp = height + 16, width + 16
    fy = torch.fft.fftfreq(hp, dtype=torch.float64)[:, None]  # cycles per pixel
    fx = torch.fft.rfftfreq(wp, dtype=torch.float64)[None, :]
    out = []
    for period in ENERGY_PERIODS:
        sd = 0.45 * period  # envelope sd in pixels: about one cycle wide, like the neurons'
        for k in range(ORIENTATIONS):
            theta = math.pi * k / ORIENTATIONS
            u0, v0 = math.cos(theta) / period, math.sin(theta) / period
            # A Gaussian envelope is a Gaussian in frequency: even = sum, odd = difference of the two lobes.
            lobe = [
                torch.exp(-2 * (math.pi * sd) ** 2 * ((fx - s * u0) ** 2 + (fy - s * v0) ** 2))
                for s in (1, -1)
            ]
            out.append(torch.stack([(lobe[0] + lobe[1]) / 2, (lobe[0] - lobe[1]) / 2]))
    return torch.stack(out)  # (F, 2, Hp, Wp//2+1): even real, odd imaginary (times -i) part


def _feature_maps(images: Tensor) -> Iterator[Tensor]:
    """The pixel values, then each Gabor pair's energy: each (T, H*W), z-scored per pixel over trials."""
    t, height, width = images.shape
    pad = torch.nn.functional.pad(images - images.mean(), (8, 8, 8, 8))  # (T, Hp, Wp)
    spectrum = torch.fft.rfft2(pad)  # (T, Hp, Wp//2+1)

    def z(m: Tensor) -> Tensor:
        return (m - m.mean(0)) / (m.std(0) + 1e-6)

    yield z(images.reshape(t, -1))
    for even, odd in _gabor_pairs(height, width).to(device=images.device, dtype=images.dtype):
        a = torch.fft.irfft2(spectrum * even, s=pad.shape[1:])[:, 8:-8, 8:-8]
        b = torch.fft.irfft2(spectrum * (odd * 1j), s=pad.shape[1:])[:, 8:-8, 8:-8]
        yield z((a * a + b * b).reshape(t, -1))


def estimate_centers(
    images: Tensor | np.ndarray, responses: Tensor | np.ndarray, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Receptive-field centres (N, 2) as (x, y) pixels and how clearly each was found (N,) in [0, 1].

    images (T, 1, H, W) or (T, H, W), responses (T, N): a recording's training trials. The score of a
    pixel is the sum over the feature maps of the squared correlation between the neuron's responses and
    the map at that pixel; the centre is the centroid of the score around its peak (3 x 3 pixels), and
    the clarity is the fraction of neurons whose responses, shuffled over trials, give a smaller peak
    (relative to the map's median) than the neuron's own: about uniform in [0, 1] for neurons without a
    receptive field, near 1 for clear ones (the null: NULL_NEURONS neurons, shuffled). Computed in
    float32 on `device`, one feature map at a time (memory: a few times T x H x W); deterministic on CPU.
    """
    x = torch.as_tensor(
        images.cpu() if isinstance(images, Tensor) else np.asarray(images), dtype=torch.float32
    )
    r = torch.as_tensor(
        responses.cpu() if isinstance(responses, Tensor) else np.asarray(responses), dtype=torch.float32
    )
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim != 3 or r.ndim != 2 or x.shape[0] != r.shape[0] or x.shape[0] < 2:
        raise ValueError(f"images {tuple(x.shape)}, responses {tuple(r.shape)}: expected (T, H, W), (T, N)")
    if x.shape[0] > MAX_TRIALS:
        keep = torch.linspace(0, x.shape[0] - 1, MAX_TRIALS).round().long()
        x, r = x[keep], r[keep]
    x, r = x.to(device), r.to(device)
    # The null: responses shuffled over trials (no receptive field to find), of up to NULL_NEURONS neurons.
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(r), generator=generator).to(device)
    chosen = torch.randperm(r.shape[1], generator=generator)[:NULL_NEURONS].to(device)
    score, null = _scores(x, torch.cat([r, r[order][:, chosen]], 1)).split([r.shape[1], len(chosen)])
    score, null = score.cpu().double(), null.cpu().double()
    height, width = score.shape[1:]
    flat = score.reshape(len(score), -1)
    median, peak = flat.median(1).values, flat.argmax(1)  # (N,)
    py, px = peak // width, peak % width
    centers = np.zeros((len(score), 2))
    for n in range(len(score)):  # centroid of the score less its median, 3 x 3 pixels around the peak
        y0, y1 = max(int(py[n]) - 1, 0), min(int(py[n]) + 2, height)
        x0, x1 = max(int(px[n]) - 1, 0), min(int(px[n]) + 2, width)
        window = (score[n, y0:y1, x0:x1] - median[n]).clamp(min=0)
        ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
        total = window.sum()
        if total > 0:
            centers[n] = [float((window * xs).sum() / total), float((window * ys).sum() / total)]
        else:
            centers[n] = [int(px[n]), int(py[n])]
    # Clarity: where the neuron's peak / median stands among those of the same responses shuffled
    # over trials (no receptive field; their peaks are what noise and smooth maps give).
    ratio = (flat.max(1).values / (median + 1e-12)).numpy()
    null = null.reshape(len(null), -1)
    null_ratio = np.sort((null.max(1).values / (null.median(1).values + 1e-12)).numpy())
    clarity = np.searchsorted(null_ratio, ratio) / len(null_ratio)
    return centers.astype(np.float32), clarity.astype(np.float32)


def _scores(images: Tensor, responses: Tensor) -> Tensor:
    """Sum over the feature maps of squared response-map correlations: (N, H, W)."""
    t, height, width = images.shape
    r = (responses - responses.mean(0)) / (responses.std(0) + 1e-6)
    score = torch.zeros(r.shape[1], height * width, device=images.device)
    for m in _feature_maps(images):
        score += (r.T @ m / (t - 1)) ** 2  # (N, H*W)
    return score.reshape(-1, height, width)
