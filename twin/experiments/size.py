"""Size tuning and surround suppression: a grating in a circular aperture of growing diameter, centred on
each neuron's receptive field at its preferred orientation and period, as measured in mouse V1 (most
neurons respond less once the grating covers their surround; Self et al. 2014, Keller et al. 2020).

Per neuron: the phase-averaged response at each diameter above the response to gray (the size-tuning
curve), the preferred diameter (the smallest reaching 95% of the peak) and the suppression index,
(peak - response to the largest grating) / peak: 0 without surround suppression, 1 where the full-field
grating drives nothing.
Where the centres and preferences are not given they are measured first, as an experimenter would: the
receptive-field centre from sparse noise, orientation and period from full-field gratings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from twin.errors import InvalidInput
from twin.experiments.common import Result, Subject, responses
from twin.experiments.stimuli import grating_patches

__all__ = ["DIAMETERS", "SizeTuning", "size_tuning"]

DIAMETERS = (2.0, 4.0, 6.0, 9.0, 13.0, 19.0, 28.0, 40.0, 60.0)  # pixels of the model's input grid


@dataclass(frozen=True)
class SizeTuning(Result):
    """Size tuning of n neurons (arrays have the neurons last): S diameters, F phases."""

    neuron_ids: np.ndarray  # (n,)
    diameters: np.ndarray  # (S,) aperture diameters, pixels of the twin's input grid
    phases: np.ndarray  # (F,) radians, at the aperture's centre
    responses: np.ndarray  # (S, F, n) mean predicted responses
    gray: np.ndarray  # (n,) response to the gray screen
    centers: np.ndarray  # (n, 2) aperture centre (x, y), pixels
    orientations: np.ndarray  # (n,) radians in [0, pi)
    periods: np.ndarray  # (n,) pixels per cycle
    amplitude: float  # grating amplitude, raw pixel units
    image_size: np.ndarray  # (2,) height, width of the grid the stimuli were built on

    @property
    def curves(self) -> np.ndarray:
        """(n, S) phase-averaged response at each diameter, minus the response to gray."""
        return (self.responses.mean(axis=1) - self.gray).T

    @property
    def preferred_diameter(self) -> np.ndarray:
        """(n,) the smallest diameter that drives the neuron to 95% of its peak (the summation field; robust
        where responses saturate and the curve plateaus); NaN where no grating drives it above gray."""
        curves = self.curves
        peak = curves.max(axis=1, keepdims=True)
        first = np.argmax(curves >= 0.95 * peak, axis=1)
        return np.where(peak[:, 0] > 0, self.diameters[first].astype(np.float64), np.nan)

    @property
    def suppression_index(self) -> np.ndarray:
        """(n,) (peak - response to the largest grating) / peak, in [0, 1]; NaN where the peak is not above
        gray."""
        curves = self.curves
        peak = curves.max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            index = np.clip((peak - curves[:, -1]) / peak, 0.0, 1.0)
        return np.where(peak > 0, index, np.nan)

    def summary(self) -> dict[str, Any]:
        index = self.suppression_index
        return {
            "neuron_ids": self.neuron_ids.tolist(),
            "diameters": self.diameters.tolist(),
            "preferred_diameter": _listed(self.preferred_diameter),
            "suppression_index": _listed(index),
            "suppression_index_median": None if np.all(np.isnan(index)) else float(np.nanmedian(index)),
            "amplitude": round(float(self.amplitude), 4),
        }


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def size_tuning(
    twin: Any,
    neurons: Sequence[int] | np.ndarray | None = None,
    *,
    centers: Any = None,
    orientations: Any = None,
    periods: Any = None,
    diameters: Sequence[float] | np.ndarray = DIAMETERS,
    phases: int = 8,
    amplitude: float | None = None,
    behavior: Any = None,
    pupil_center: Any = None,
    batch: int = 256,
) -> SizeTuning:
    """Size-tuning curves of `neurons` (default all) of `twin`.

    `centers` (n, 2) x, y in pixels of the twin's input grid, `orientations` (n,) radians and `periods`
    (n,) pixels per cycle place and shape each neuron's grating; any left out is measured first
    (`receptive_fields`, `orientation_tuning`; a neuron whose receptive field is not found gets the image
    centre). `amplitude` defaults to sqrt(2) x the training images' pixel sd (a full-field grating of
    natural-image contrast). Each neuron sees only its own stimuli: `diameters` x `phases` images.
    """
    subject = Subject.of(twin, neurons, behavior, pupil_center)
    n = subject.neuron_ids.size
    if phases < 1:
        raise InvalidInput(f"phases: {phases}; expected >= 1")
    sizes = np.asarray(diameters, np.float64).ravel()
    if sizes.size < 2 or not np.all(np.isfinite(sizes)) or np.any(sizes <= 0) or np.any(np.diff(sizes) <= 0):
        raise InvalidInput(f"diameters: {sizes.tolist()}; expected at least 2 increasing sizes > 0 (pixels)")
    amplitude = subject.grating_amplitude if amplitude is None else float(amplitude)
    condition = {"behavior": behavior, "pupil_center": pupil_center}
    height, width = subject.image_size
    if centers is None:
        from twin.experiments.receptive_field import receptive_fields

        found = receptive_fields(twin, subject.neuron_ids, **condition).centers
        centers = np.where(np.isnan(found), [(width - 1) / 2, (height - 1) / 2], found)
    if orientations is None or periods is None:
        from twin.experiments.tuning import orientation_tuning

        tuning = orientation_tuning(twin, subject.neuron_ids, amplitude=amplitude, **condition)
        orientations = tuning.preferred_orientation if orientations is None else orientations
        periods = tuning.preferred_period if periods is None else periods
    centers = _per_neuron("centers", centers, (n, 2))
    orientations = np.mod(_per_neuron("orientations", orientations, (n,)), np.pi)
    periods = _per_neuron("periods", periods, (n,))
    if np.any(periods <= 0):
        raise InvalidInput(f"periods: {periods.tolist()[:5]}; expected pixels per cycle > 0")
    phase_values = np.arange(phases) * 2 * np.pi / phases

    gray_image = np.full((1, height, width), subject.gray, np.float32)
    gray = responses(subject, gray_image)[0]
    per_image = sizes.size * phases
    group = max(1, batch // per_image)  # neurons whose stimuli go to the twin in one call
    measured = np.empty((sizes.size, phases, n), np.float32)
    for start in range(0, n, group):
        part = slice(start, min(start + group, n))
        stimuli = grating_patches(
            (height, width),
            centers[part],
            orientations[part],
            periods[part],
            sizes,
            phase_values,
            gray=subject.gray,
            amplitude=amplitude,
        )  # (g, S, F, H, W)
        g = stimuli.shape[0]
        some = replace(subject, neuron_ids=subject.neuron_ids[part])
        answers = responses(some, stimuli.reshape(-1, height, width), batch=batch)  # (g*S*F, g)
        answers = answers.reshape(g, sizes.size, phases, g)
        measured[..., part] = np.stack([answers[k, :, :, k] for k in range(g)], axis=-1)
    return SizeTuning(
        neuron_ids=subject.neuron_ids,
        diameters=sizes.astype(np.float32),
        phases=phase_values.astype(np.float32),
        responses=measured,
        gray=gray,
        centers=centers.astype(np.float32),
        orientations=orientations.astype(np.float32),
        periods=periods.astype(np.float32),
        amplitude=float(amplitude),
        image_size=np.array([height, width]),
    )


def _per_neuron(name: str, values: Any, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(values, np.float64)
    if a.shape != shape or not np.all(np.isfinite(a)):
        raise InvalidInput(f"{name}: shape {a.shape}; expected {shape} finite numbers, one per neuron")
    return a
