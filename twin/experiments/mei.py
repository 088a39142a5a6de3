"""Most exciting images (MEIs): the image that drives a neuron most under a contrast budget, found by
gradient ascent on the twin's input gradient (Walker et al. 2019, Bashivan et al. 2019).

One image per neuron, optimized together: each step asks the twin for d(response of neuron k)/d(image k)
for every k in one `gradient` call (one-hot weights), smooths it with a Gaussian (a prior for smooth
images; `blur=0` turns it off), moves each image a fraction of its contrast budget along it, then projects
back: the image's RMS contrast around the gray level at most the budget, pixels within [low, high]. The
step shrinks from `step` to `step / 10` over the run. The best image each neuron reached is kept. Runs on
any twin with `gradient`: in process, or a served model through `TwinClient`, with identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twin.errors import InvalidInput
from twin.experiments.common import Result, Subject, Twin, responses

__all__ = ["MEIs", "gaussian_blur", "most_exciting_images"]


@dataclass(frozen=True)
class MEIs(Result):
    """n optimized images and how far each drove its neuron."""

    neuron_ids: np.ndarray  # (n,)
    images: np.ndarray  # (n, H, W) float32, raw pixel units on the twin's input grid
    activation: np.ndarray  # (n,) each neuron's predicted response to its image
    start: np.ndarray  # (n,) ... to the starting image
    trace: np.ndarray  # (steps + 1, n) the response after every step
    gray: float
    rms_contrast: float  # the budget: RMS of (image - gray), raw pixel units

    def summary(self) -> dict[str, Any]:
        return {
            "neuron_ids": self.neuron_ids.tolist(),
            "activation": self.activation.round(6).tolist(),
            "start": self.start.round(6).tolist(),
            "rms_contrast": round(self.rms_contrast, 4),
            "steps": int(self.trace.shape[0] - 1),
        }


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of (B, H, W) with reflected borders; sigma in pixels (0: unchanged)."""
    if sigma <= 0:
        return images
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = images
    for axis in (1, 2):
        size = out.shape[axis]
        index = np.arange(-radius, size + radius)
        index = np.abs(index)  # reflect below 0 ...
        index = np.where(index >= size, 2 * (size - 1) - index, index)  # ... and beyond the edge
        index = np.clip(index, 0, size - 1)
        padded = np.take(out, index, axis=axis)
        out = sum(w * np.take(padded, np.arange(k, k + size), axis=axis) for k, w in enumerate(taps))
    return out.astype(np.float32)


def _project(images: np.ndarray, gray: float, budget: float, low: float, high: float) -> np.ndarray:
    """Each image's RMS contrast around gray at most `budget`, then pixels within [low, high] (which can
    only lower the contrast further, gray lying inside the range)."""
    deviation = images - gray
    rms = np.sqrt(np.mean(np.square(deviation), axis=(1, 2), keepdims=True))
    scale = np.minimum(1.0, budget / np.maximum(rms, 1e-12))
    return np.clip(gray + deviation * scale, low, high).astype(np.float32)


def most_exciting_images(
    twin: Any,
    neurons: Sequence[int] | np.ndarray,
    *,
    steps: int = 200,
    step: float = 0.1,
    rms_contrast: float | None = None,
    blur: float = 1.0,
    low: float = 0.0,
    high: float = 255.0,
    start: str = "noise",
    seed: int = 0,
    behavior: Any = None,
    pupil_center: Any = None,
    batch: int = 32,
) -> MEIs:
    """Optimize one image per neuron id in `neurons` for that neuron's predicted response.

    `rms_contrast` (raw pixel units) defaults to the training images' pixel sd, so an MEI is no stronger
    a stimulus than a natural image; `step` is the fraction of that budget one step may move an image;
    `start` is "gray" or "noise" (low-contrast Gaussian noise, seeded); `blur` the gradient smoothing in
    pixels. `batch` images go to the twin per call.
    """
    if not isinstance(twin, Twin):
        raise InvalidInput(f"twin: {type(twin).__name__}; expected a twin with gradient() for an MEI")
    if neurons is None:
        raise InvalidInput("neurons: None; expected the ids of the neurons to find images for")
    subject = Subject.of(twin, neurons, behavior, pupil_center)
    if steps < 1:
        raise InvalidInput(f"steps: {steps}; expected >= 1")
    if not 0 < step <= 1:
        raise InvalidInput(f"step: {step}; expected a fraction of the contrast budget in (0, 1]")
    if start not in ("gray", "noise"):
        raise InvalidInput(f"start: {start!r}; expected 'gray' or 'noise'")
    gray = subject.gray
    if not low < gray < high:
        raise InvalidInput(f"low, high: {low}, {high}; expected a range around the gray level {gray:.2f}")
    budget = float(subject.contrast if rms_contrast is None else rms_contrast)
    if not budget > 0:
        raise InvalidInput(f"rms_contrast: {rms_contrast}; expected > 0 (raw pixel units)")

    columns = {int(n): c for c, n in enumerate(subject.info["neuron_ids"])}
    targets = np.array([columns[int(n)] for n in subject.neuron_ids])
    n, size = targets.size, subject.image_size
    images = np.full((n, *size), gray, np.float32)
    if start == "noise":
        noise = np.random.default_rng(seed).normal(0, 0.1 * budget, (n, *size))
        images = _project(images + noise.astype(np.float32), gray, budget, low, high)

    def activation(x: np.ndarray) -> np.ndarray:  # image k's response of neuron k
        return np.diagonal(responses(subject, x, batch=batch)).copy()

    trace = [activation(images)]
    best, best_value = images.copy(), trace[0].copy()
    for k in range(steps):
        gradient = _gradients(subject, images, targets, batch)
        gradient = gaussian_blur(gradient, blur)
        rms = np.sqrt(np.mean(np.square(gradient), axis=(1, 2), keepdims=True))
        size_now = step * (1 - 0.9 * k / max(steps - 1, 1)) * budget
        images = _project(images + size_now * gradient / np.maximum(rms, 1e-30), gray, budget, low, high)
        trace.append(activation(images))
        better = trace[-1] > best_value
        best[better], best_value[better] = images[better], trace[-1][better]
    return MEIs(
        neuron_ids=subject.neuron_ids,
        images=best,
        activation=best_value,
        start=trace[0],
        trace=np.stack(trace),
        gray=gray,
        rms_contrast=budget,
    )


def _gradients(subject: Subject, images: np.ndarray, targets: np.ndarray, batch: int) -> np.ndarray:
    """d response[k, targets[k]] / d images[k] for every k, `batch` images per gradient call."""
    twin = subject.twin
    assert isinstance(twin, Twin)  # most_exciting_images checked it
    out = np.empty_like(images)
    n_neurons = int(subject.info["n_neurons"])
    for begin in range(0, images.shape[0], batch):
        chunk = slice(begin, begin + batch)
        rows = images[chunk].shape[0]
        weights = np.zeros((rows, n_neurons), np.float32)
        weights[np.arange(rows), targets[chunk]] = 1.0
        out[chunk] = twin.gradient(images[chunk], weights, **subject.condition.rows(rows))
    return out
