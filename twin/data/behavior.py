"""The simulated animal's behaviour over one session, one value per trial in presentation order.

A slow arousal state (an AR(1) process with a time constant of about a minute of trials) dilates the
pupil and makes running bouts more likely; the eye fixates and makes saccades, more often while running.
Units mimic SENSORIUM: pupil dilation and eye position in eye-camera pixels, running speed in cm/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EYE_CENTER", "Behavior", "simulate_behavior"]

EYE_CENTER = np.array([320.0, 240.0], np.float32)  # camera-pixel position of the resting eye


@dataclass(frozen=True)
class Behavior:
    """Per-trial behaviour in presentation order (T trials)."""

    behavior: np.ndarray  # (T, 3) pupil dilation, its derivative, running speed
    pupil_center: np.ndarray  # (T, 2) eye position (horizontal, vertical)
    arousal: np.ndarray  # (T,) the latent state, for ground truth


def _ar1(rng: np.random.Generator, n: int, tau: float) -> np.ndarray:
    """Unit-variance AR(1) series with time constant `tau` trials."""
    a = np.exp(-1.0 / tau)
    noise = rng.normal(0, np.sqrt(1 - a * a), n)
    out = np.empty(n)
    out[0] = rng.normal()
    for t in range(1, n):
        out[t] = a * out[t - 1] + noise[t]
    return out


def simulate_behavior(rng: np.random.Generator, n_trials: int) -> Behavior:
    arousal = _ar1(rng, n_trials, tau=60.0)
    running = np.zeros(n_trials, bool)
    start = 1 / (1 + np.exp(-(-3.5 + 1.5 * arousal)))  # P(start a bout) per trial
    draws = rng.random(n_trials)
    for t in range(1, n_trials):
        running[t] = draws[t] > 0.06 if running[t - 1] else draws[t] < start[t]
    cruising = np.clip(12.0 + 4.0 * _ar1(rng, n_trials, tau=20.0), 2.0, None)
    speed = np.where(running, cruising, np.abs(rng.normal(0, 0.4, n_trials)))
    speed = np.convolve(speed, np.ones(3) / 3, mode="same")  # a bout ramps over a couple of trials

    locomotion = np.convolve(running.astype(float), np.ones(10) / 10, mode="same")
    pupil = 20.0 + 4.0 * arousal + 3.0 * locomotion + rng.normal(0, 0.5, n_trials)
    pupil = np.clip(pupil, 4.0, None)
    dpupil = np.diff(pupil, prepend=pupil[0])

    fixation = np.zeros((n_trials, 2))
    current = np.zeros(2)
    saccade_p = np.where(running, 0.25, 0.06)
    jumps = rng.random(n_trials) < saccade_p
    targets = rng.normal(0, 1, (n_trials, 2)) * np.array([7.0, 3.0])
    drift = rng.normal(0, 0.3, (n_trials, 2))
    for t in range(n_trials):
        current = 0.8 * targets[t] + 0.2 * current if jumps[t] else 0.98 * current + drift[t]
        fixation[t] = current
    pupil_center = EYE_CENTER + fixation + rng.normal(0, 0.3, (n_trials, 2))

    behavior = np.stack([pupil, dpupil, speed], axis=1).astype(np.float32)
    return Behavior(behavior=behavior, pupil_center=pupil_center.astype(np.float32), arousal=arousal)
