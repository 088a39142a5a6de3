"""The simulated mouse: SENSORIUM-layout recordings from a ground-truth population of model V1 neurons.

`simulate(preset, out, seed)` writes, under `out/`:
- one SENSORIUM folder per recording (`static{data_key}-GrayImageNet-{digest}/`), competition recordings
  with held-out responses zeroed (and, for the image-only track, behaviour and pupil centre zeroed);
- `held_out/{data_key}/`: the true held-out responses, read only by evaluation;
- `ground_truth/{data_key}/`: what real data lacks: the neurons' parameters (`population.npz`), the
  noise-free expected response of every trial, the true behaviour and pupil centre;
- `simulation.json`: preset, seed, and per recording the FEV distribution and the oracle ceilings.

`GroundTruth.load(out, data_key)` answers the ground truth for *any* new images and behaviour.
Trial-to-trial noise is Gamma (non-negative, heavy-tailed like deconvolved calcium) around the expected
response times shared multiplicative fluctuations; each neuron's Gamma shape is set so its explainable
variance on the test images follows the distribution of real recordings (median FEV ~0.2).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from twin import metrics
from twin.data.behavior import EYE_CENTER, simulate_behavior
from twin.data.heldout import HeldOut, write_held_out
from twin.data.population import Population, calibrate_population, sample_population
from twin.data.presets import Preset, RecordingSpec, get_preset
from twin.data.recording import HELD_OUT_TIERS, Recording
from twin.data.stimuli import natural_images
from twin.data.writer import folder_name, write_recording
from twin.errors import FormatError, InvalidInput

__all__ = ["GroundTruth", "SimulatedRecording", "simulate", "simulate_recording"]

TEST_IMAGE_ID0 = 100000  # test images: 100000.., final_test images: 100000 + n_test_images..
_FEV_UNRESPONSIVE = 0.15  # fraction of neurons drawn from a near-zero FEV distribution
_FEV_BETA = (2.3, 7.0)  # overall: median FEV ~0.2, ~62% >= 0.15 (real recordings: 55-70%)
_NOISE_SHAPE_RANGE = (0.08, 20.0)
_SIMULATION_VERSION = 1


@dataclass(frozen=True, eq=False)
class SimulatedRecording:
    """One recording as released, plus what only the simulation knows."""

    spec: RecordingSpec
    recording: Recording  # as released: held-out responses (and behaviour for image-only) zeroed
    population: Population
    expected_responses: np.ndarray  # (n, N) noise-free expected responses, file order
    true_responses: np.ndarray  # (n, N) every trial's responses, none zeroed
    true_behavior: np.ndarray  # (n, 3)
    true_pupil_center: np.ndarray  # (n, 2)
    held_out: HeldOut | None


def _digest(*parts: object) -> str:
    return hashlib.md5("-".join(map(str, parts)).encode()).hexdigest()


def _trial_plan(spec: RecordingSpec, preset: Preset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiers and image ids of every trial, grouped by tier (not yet in presentation order)."""
    base = 10000 * (index + 1)
    unique = base + np.arange(spec.n_train + spec.n_validation)
    test = TEST_IMAGE_ID0 + np.arange(preset.n_test_images)
    tiers = ["train"] * spec.n_train + ["validation"] * spec.n_validation
    image_ids = [unique]
    tiers += ["test"] * (preset.n_test_images * preset.repeats)
    image_ids.append(np.repeat(test, preset.repeats))
    if spec.competition:
        final = test + preset.n_test_images
        tiers += ["final_test"] * (preset.n_test_images * preset.repeats)
        image_ids.append(np.repeat(final, preset.repeats))
    return np.array(tiers), np.concatenate(image_ids).astype(np.int64)


def _coordinates(rng: np.random.Generator, n: int) -> np.ndarray:
    """Cortical positions (um, motor coordinates): a 630 um field of view over ~10 imaging planes."""
    offset = rng.uniform(-1500, 1500, 2)
    xy = offset + rng.uniform(0, 630, (n, 2))
    depth = rng.uniform(180, 220) + 20.0 * rng.integers(0, 10, n)
    return np.column_stack([xy, depth]).astype(np.float32)


def _fev_targets(rng: np.random.Generator, n: int) -> np.ndarray:
    unresponsive = rng.random(n) < _FEV_UNRESPONSIVE
    return np.where(unresponsive, rng.beta(1.0, 30.0, n), rng.beta(*_FEV_BETA, n))


def _noise_shapes(mean_test: np.ndarray, image_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Gamma shape per neuron giving FEV = target on the test tier.

    With r ~ Gamma(k, m/k): total variance = Var(m) + E[m^2]/k, noise variance = E_img Var_rep(m) +
    E[m^2]/k, so FEV = (c - a) / (c + b/k) with c = Var(m), a = E_img Var_rep(m), b = E[m^2].
    """
    a, c = metrics.repeat_variances(mean_test, image_ids)
    b = np.mean(np.square(mean_test, dtype=np.float64), axis=0)
    room = c - a - c * targets
    shapes = np.where(room > 0, b * targets / np.where(room > 0, room, 1.0), _NOISE_SHAPE_RANGE[1])
    return np.clip(shapes, *_NOISE_SHAPE_RANGE).astype(np.float32)


def _timestamps(start: dt.datetime, n: int, rng: np.random.Generator) -> np.ndarray:
    seconds = np.cumsum(rng.uniform(0.95, 1.15, n))
    return np.array([(start + dt.timedelta(seconds=float(s))).isoformat(sep=" ") for s in seconds])


def simulate_recording(
    spec: RecordingSpec,
    preset: Preset,
    seed: int,
    index: int,
    images_for,
    progress: bool = True,
) -> SimulatedRecording:
    """Simulate recording number `index` of `preset`. `images_for(ids)` returns (k, H, W) uint8 images."""
    rng = np.random.default_rng([seed, index, 1])
    tiers, image_ids = _trial_plan(spec, preset, index)
    n = tiers.size
    order = rng.permutation(n)  # presentation order: tiers interleaved through the session
    tiers, image_ids = tiers[order], image_ids[order]
    behavior = simulate_behavior(rng, n)

    unique_ids, inverse = np.unique(image_ids, return_inverse=True)
    unique_images = images_for(unique_ids)  # (U, H, W) uint8
    coordinates = _coordinates(rng, spec.n_neurons)
    population = sample_population(
        rng,
        coordinates,
        behavior_mean=behavior.behavior.mean(0),
        behavior_std=behavior.behavior.std(0) + 1e-6,
        eye_center=EYE_CENTER,
    )
    calibration = unique_images[rng.choice(len(unique_ids), min(256, len(unique_ids)), replace=False)]
    population = calibrate_population(population, calibration)

    filters = population.filters()
    expected = np.empty((n, spec.n_neurons), np.float32)
    chunk = 512
    with tqdm(
        total=n, desc=f"neurons {spec.data_key}", unit="trial", disable=not progress, leave=False
    ) as bar:
        for start in range(0, n, chunk):
            s = slice(start, start + chunk)
            expected[s] = population.expected_responses(
                unique_images[inverse[s]], behavior.behavior[s], behavior.pupil_center[s], filters=filters
            )
            bar.update(expected[s].shape[0])

    # Shared fluctuations: one slow factor (like arousal not captured by the pupil), two fast ones.
    latent = rng.normal(0, 1, (n, 3))
    latent[:, 0] = np.convolve(latent[:, 0], np.ones(5) / np.sqrt(5), mode="same")
    loadings = population.noise_loadings
    shared = np.exp(latent @ loadings.T - 0.5 * np.sum(loadings**2, axis=1)).astype(np.float32)
    mean = expected * shared  # (n, N)
    test = tiers == "test"
    shapes = _noise_shapes(mean[test], image_ids[test], _fev_targets(rng, spec.n_neurons))
    population = _replace(population, noise_shape=shapes)
    responses = np.empty_like(mean)
    for start in range(0, n, 2048):
        s = slice(start, start + 2048)
        responses[s] = rng.gamma(shapes, mean[s] / shapes)
    del mean, shared

    # Files are in random order; trial_idx keeps the presentation order.
    files = rng.permutation(n)
    presentation = files.astype(np.int64)
    tiers, image_ids = tiers[files], image_ids[files]
    true = {
        "responses": responses[files],
        "expected": expected[files],
        "behavior": behavior.behavior[files],
        "pupil_center": behavior.pupil_center[files],
    }
    del responses, expected
    unique_pos = np.searchsorted(unique_ids, image_ids)
    images = unique_images[unique_pos][:, None]  # (n, 1, H, W)
    start_time = dt.datetime(2021, 1, 4, 9, 0) + dt.timedelta(days=7 * index)
    trials_meta = {"frame_trial_ts": _timestamps(start_time, n, rng)[presentation]}

    released_responses = true["responses"]
    released_behavior, released_pupil = true["behavior"], true["pupil_center"]
    trial_ids = presentation
    held_out = None
    if spec.competition:
        hidden = np.isin(tiers, HELD_OUT_TIERS)
        held_out = HeldOut(
            data_key=spec.data_key,
            responses=true["responses"][hidden],
            trial_index=np.flatnonzero(hidden),
            neuron_ids=np.arange(1, spec.n_neurons + 1),
            tiers=tiers[hidden],
        )
        released_responses = released_responses.copy()
        released_responses[hidden] = 0.0
        # Held-out trials' presentation order is hidden too (no exploiting neighbouring trials).
        trial_ids = presentation.copy()
        trial_ids[hidden] = rng.choice(np.arange(10**6, 10**7), hidden.sum(), replace=False)
        if spec.role == "image_only":
            released_behavior = np.zeros_like(released_behavior)
            released_pupil = np.zeros_like(released_pupil)

    recording = Recording(
        data_key=spec.data_key,
        images=images,
        responses=released_responses,
        behavior=released_behavior,
        pupil_center=released_pupil,
        tiers=tiers,
        image_ids=image_ids,
        trial_ids=trial_ids,
        neuron_ids=np.arange(1, spec.n_neurons + 1),
        cell_motor_coordinates=coordinates,
        trials_meta=trials_meta,
    )
    return SimulatedRecording(
        spec=spec,
        recording=recording,
        population=population,
        expected_responses=true["expected"],
        true_responses=true["responses"],
        true_behavior=true["behavior"],
        true_pupil_center=true["pupil_center"],
        held_out=held_out,
    )


def _replace(population: Population, **changes: np.ndarray) -> Population:
    from dataclasses import replace

    return replace(population, **changes)


class _ImageBank:
    """Generates stimuli by id on demand; keeps the shared test images so every recording reuses them."""

    def __init__(self, preset: Preset, seed: int) -> None:
        self.height, self.width = preset.image_size
        self.seed = seed
        self.shared: dict[int, np.ndarray] = {}

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.height, self.width), np.uint8)
        shared = ids >= TEST_IMAGE_ID0
        missing = [int(i) for i in ids[shared] if int(i) not in self.shared]
        if missing:
            for i, image in zip(missing, self._generate(np.array(missing)), strict=False):
                self.shared[i] = image
        if shared.any():
            out[shared] = np.stack([self.shared[int(i)] for i in ids[shared]])
        out[~shared] = self._generate(ids[~shared])
        return out

    def _generate(self, ids: np.ndarray) -> np.ndarray:
        return natural_images(ids, self.height, self.width, seed=self.seed)


def simulate(
    preset: str | Preset,
    out: str | os.PathLike[str],
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a simulated mouse to `out` (built in a temporary sibling, then renamed). Returns the summary."""
    from twin.data.summary import ceilings

    preset = get_preset(preset) if isinstance(preset, str) else preset
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInput(f"seed: {seed!r}; expected an integer >= 0")
    target = Path(out)
    if target.exists() and not overwrite and any(target.iterdir()):
        raise FormatError(f"{target}: exists and is not empty; choose another folder or overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    summary: dict = {"version": _SIMULATION_VERSION, "preset": preset.name, "seed": seed, "recordings": []}
    bank = _ImageBank(preset, seed)
    try:
        for index, spec in enumerate(tqdm(preset.recordings, desc="recordings", disable=not progress)):
            sim = simulate_recording(spec, preset, seed, index, bank, progress=progress)
            name = folder_name(spec.data_key, digest=_digest(preset.name, seed, spec.data_key))
            write_recording(sim.recording, tmp / name, progress=progress)
            truth = tmp / "ground_truth" / spec.data_key
            truth.mkdir(parents=True)
            sim.population.save(truth / "population.npz")
            np.save(truth / "expected_responses.npy", sim.expected_responses)
            np.save(truth / "behavior.npy", sim.true_behavior)
            np.save(truth / "pupil_center.npy", sim.true_pupil_center)
            (truth / "ground_truth.json").write_text(
                json.dumps(
                    {
                        "data_key": spec.data_key,
                        "role": spec.role,
                        "folder": name,
                        "image_size": list(preset.image_size),
                        "seed": seed,
                        "preset": preset.name,
                    },
                    indent=1,
                )
            )
            if sim.held_out is not None:
                write_held_out(sim.held_out, tmp / "held_out" / spec.data_key)
            entry = {
                "data_key": spec.data_key,
                "folder": name,
                "role": spec.role,
                "neurons": spec.n_neurons,
                "trials": sim.recording.tier_counts(),
                "ceilings": ceilings(sim.recording, sim.true_responses, sim.expected_responses),
            }
            summary["recordings"].append(entry)
            del sim
        (tmp / "simulation.json").write_text(json.dumps(summary, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


class GroundTruth:
    """The true expected responses of one simulated recording's neurons to any images and behaviour."""

    def __init__(self, data_key: str, population: Population, image_size: tuple[int, int], folder: Path):
        self.data_key = data_key
        self.population = population
        self.image_size = image_size
        self.folder = folder
        self._filters: np.ndarray | None = None

    @classmethod
    def load(cls, simulation_dir: str | os.PathLike[str], data_key: str) -> GroundTruth:
        folder = Path(simulation_dir) / "ground_truth" / data_key
        if not (folder / "population.npz").is_file():
            known = sorted(p.name for p in (Path(simulation_dir) / "ground_truth").glob("*"))
            raise InvalidInput(
                f"data_key: no ground truth for {data_key!r} in {simulation_dir}; known: {known}"
            )
        meta = json.loads((folder / "ground_truth.json").read_text())
        return cls(data_key, Population.load(folder / "population.npz"), tuple(meta["image_size"]), folder)

    @property
    def n_neurons(self) -> int:
        return self.population.n_neurons

    def __call__(
        self,
        images: np.ndarray,
        behavior: np.ndarray | None = None,
        pupil_center: np.ndarray | None = None,
        *,
        columns: np.ndarray | None = None,
    ) -> np.ndarray:
        """Expected responses (B, N) to raw-pixel images (B, 1, H, W); behaviour in raw units.

        Without behaviour the gain is the one at the session's mean behaviour; without pupil centre the
        eye is at rest (no image shift). `columns` (indices into the N neurons): only those neurons are
        computed, (B, len(columns)): experiments that show each neuron its own stimuli (size tuning) ask
        for a few neurons per image, and a neuron's filtering costs as much as the rest of the model.
        """
        if columns is None:
            return self.population.expected_responses(images, behavior, pupil_center, filters=self.filters())
        columns = np.asarray(columns)
        n = self.n_neurons
        if columns.ndim != 1 or columns.size == 0 or columns.dtype.kind not in "iu":
            raise InvalidInput(
                f"columns: {columns.dtype} array of shape {columns.shape}; expected a non-empty 1-d array "
                "of neuron indices"
            )
        outside = columns[(columns < 0) | (columns >= n)]
        if outside.size:
            raise InvalidInput(
                f"columns: {outside.size} indices outside the population (e.g. {int(outside[0])}); "
                f"expected indices in [0, {n})"
            )
        filters = self.filters()[:, np.concatenate([columns, columns + n])]  # their even, then odd Gabors
        return self.population.subset(columns).expected_responses(
            images, behavior, pupil_center, filters=filters
        )

    def filters(self) -> np.ndarray:
        """(P, 2N) the neurons' even and odd Gabors on the 36 x 64 grid (Population.filters), made once."""
        if self._filters is None:
            self._filters = self.population.filters()
        return self._filters

    def expected_responses(self) -> np.ndarray:
        """(n, N) noise-free expected responses of the recording's own trials, in file order."""
        return np.load(self.folder / "expected_responses.npy", mmap_mode="r")

    def behavior(self) -> tuple[np.ndarray, np.ndarray]:
        """The true (behavior, pupil_center) of every trial, also where the release zeroes them."""
        return np.load(self.folder / "behavior.npy"), np.load(self.folder / "pupil_center.npy")
