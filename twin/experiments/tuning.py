"""Orientation and spatial-frequency tuning from full-field gratings, as measured in mouse V1.

Every neuron sees every grating (orientations x periods x phases). Per neuron: the phase-averaged
response (F0) and first-harmonic amplitude over phase (F1) of each grating, the preferred orientation and
period (the grating with the largest F0 above the response to gray), the orientation tuning curve at the
preferred period, the orientation selectivity index (1 - circular variance on the doubled angle) and the
modulation ratio F1 / F0 (above gray), which exceeds 1 for simple cells and stays below it for complex
cells (Skottun et al. 1991).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twin.errors import InvalidInput
from twin.experiments.common import Result, Subject, responses_and_gray
from twin.experiments.stimuli import gratings

__all__ = ["Tuning", "orientation_tuning"]


@dataclass(frozen=True)
class Tuning(Result):
    """Tuning of n neurons (arrays have the neurons last): O orientations, P periods, F phases."""

    neuron_ids: np.ndarray  # (n,)
    orientations: np.ndarray  # (O,) radians in [0, pi)
    periods: np.ndarray  # (P,) pixels per cycle of the twin's input grid
    phases: np.ndarray  # (F,) radians
    responses: np.ndarray  # (O, P, F, n) mean predicted responses
    gray: np.ndarray  # (n,) response to the gray screen
    amplitude: float  # grating amplitude, raw pixel units
    image_size: np.ndarray  # (2,) height, width of the grid the stimuli were built on

    @property
    def f0(self) -> np.ndarray:
        """(O, P, n) response averaged over phase."""
        return self.responses.mean(axis=2)

    @property
    def f1(self) -> np.ndarray:
        """(O, P, n) amplitude of the response's first harmonic over phase."""
        harmonic = np.exp(-1j * self.phases)[None, None, :, None]
        return 2 * np.abs((self.responses * harmonic).mean(axis=2))

    @property
    def _preferred(self) -> tuple[np.ndarray, np.ndarray]:
        f0 = self.f0.reshape(-1, self.f0.shape[-1])
        best = np.argmax(f0, axis=0)
        orientation, period = np.unravel_index(best, self.f0.shape[:2])
        return orientation, period

    @property
    def preferred_period(self) -> np.ndarray:
        return self.periods[self._preferred[1]]

    @property
    def curves(self) -> np.ndarray:
        """(n, O) orientation tuning at each neuron's preferred period, minus the response to gray."""
        _, period = self._preferred
        n = np.arange(self.neuron_ids.size)
        return (self.f0[:, period, n] - self.gray).T

    @property
    def preferred_orientation(self) -> np.ndarray:
        """(n,) radians in [0, pi): half the angle of the curve's mean on the doubled circle."""
        vector = self._doubled_angle_vector()
        return np.mod(np.angle(vector) / 2, np.pi)

    @property
    def orientation_selectivity(self) -> np.ndarray:
        """(n,) 1 - circular variance of the curve (gray-subtracted, negative parts dropped): 0 untuned,
        1 responding at one orientation only."""
        weights = np.maximum(self.curves, 0)
        total = weights.sum(axis=1)
        return np.where(total > 0, np.abs(self._doubled_angle_vector()) / np.maximum(total, 1e-30), 0.0)

    def _doubled_angle_vector(self) -> np.ndarray:
        weights = np.maximum(self.curves, 0)
        return (weights * np.exp(2j * self.orientations)[None]).sum(axis=1)

    @property
    def modulation_ratio(self) -> np.ndarray:
        """(n,) F1 / (F0 - gray) of the preferred grating: > 1 simple-like, < 1 complex-like."""
        orientation, period = self._preferred
        n = np.arange(self.neuron_ids.size)
        driven = self.f0[orientation, period, n] - self.gray
        return np.where(driven > 0, self.f1[orientation, period, n] / np.maximum(driven, 1e-30), np.nan)

    def summary(self) -> dict[str, Any]:
        return {
            "neuron_ids": self.neuron_ids.tolist(),
            "preferred_orientation_deg": np.degrees(self.preferred_orientation).round(2).tolist(),
            "preferred_period_px": self.preferred_period.round(3).tolist(),
            "orientation_selectivity": self.orientation_selectivity.round(4).tolist(),
            "modulation_ratio": [None if np.isnan(v) else round(float(v), 4) for v in self.modulation_ratio],
        }


def orientation_tuning(
    twin: Any,
    neurons: Sequence[int] | np.ndarray | None = None,
    *,
    orientations: int = 16,
    periods: Sequence[float] | np.ndarray = (4.0, 5.66, 8.0, 11.3, 16.0),
    phases: int = 8,
    amplitude: float | None = None,
    behavior: Any = None,
    pupil_center: Any = None,
    batch: int = 256,
) -> Tuning:
    """Show full-field gratings to a twin and measure its neurons' orientation and frequency tuning.

    `periods` are pixels per cycle of the twin's input grid (`info()["image_size"]`); the gratings are
    built at that resolution. `amplitude` defaults to sqrt(2) x the training images' pixel sd, i.e. the
    gratings have the natural images' RMS contrast. Behaviour and pupil centre (raw units, one row) are the
    condition every grating is shown in; a twin that needs them refuses to run without.
    """
    subject = Subject.of(twin, neurons, behavior, pupil_center)
    if orientations < 2 or phases < 2:
        raise InvalidInput(f"orientations, phases: {orientations}, {phases}; expected >= 2 each")
    theta = np.arange(orientations) * np.pi / orientations
    phi = np.arange(phases) * 2 * np.pi / phases
    period = np.asarray(periods, np.float64)
    if amplitude is None:
        amplitude = subject.grating_amplitude
    images = gratings(subject.image_size, theta, period, phi, gray=subject.gray, amplitude=amplitude)
    measured, gray = responses_and_gray(subject, images, batch=batch)
    return Tuning(
        neuron_ids=subject.neuron_ids,
        orientations=theta,
        periods=period,
        phases=phi,
        responses=measured,
        gray=gray,
        amplitude=float(amplitude),
        image_size=np.asarray(subject.image_size),
    )
