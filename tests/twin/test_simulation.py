"""The simulated mouse: determinism, calibration against real recordings, competition roles, ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twin import metrics
from twin.data import GroundTruth, Preset, RecordingSpec, load_held_out, load_recording, restore, simulate
from twin.data.population import GRID, translate
from twin.errors import FormatError, InvalidInput

MICRO = Preset(
    "micro",
    (36, 64),
    (
        RecordingSpec("90001-1-1", "image_only", 12, n_train=30, n_validation=6),
        RecordingSpec("90003-1-1", "pretrain", 10, n_train=20, n_validation=4),
    ),
    n_test_images=6,
    repeats=3,
)


@pytest.fixture(scope="module")
def recordings(tiny_paths):
    return {key: load_recording(path, progress=False) for key, path in tiny_paths.items()}


@pytest.fixture(scope="module")
def true_responses(tiny_sim, recordings):
    return {key: restore(rec, load_held_out(tiny_sim / "held_out" / key)) for key, rec in recordings.items()}


def _files(root):
    """Every .npy file's bytes, keyed by its path without the folder digest (which includes the seed)."""
    out = {}
    for p in sorted(root.rglob("*.npy")):
        parts = p.relative_to(root).parts
        out[(parts[0].split("-GrayImageNet-")[0], *parts[1:])] = p.read_bytes()
    return out


def test_same_seed_same_mouse_other_seed_other_mouse(tmp_path):
    simulate(MICRO, tmp_path / "a", seed=3, progress=False)
    simulate(MICRO, tmp_path / "b", seed=3, progress=False)
    simulate(MICRO, tmp_path / "c", seed=4, progress=False)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:3]
    differs = [k for k in a if k in c and a[k] != c[k] and "responses" in k]
    assert len(differs) > 10


def test_refuses_a_non_empty_output_and_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FormatError, match="exists and is not empty"):
        simulate(MICRO, tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidInput, match="preset: 'huge'"):
        simulate("huge", tmp_path / "x", progress=False)
    with pytest.raises(InvalidInput, match="seed"):
        simulate(MICRO, tmp_path / "x", seed=-1, progress=False)
    with pytest.raises(InvalidInput, match="role"):
        RecordingSpec("1-1-1", "competition", 5, 5, 5)


@pytest.mark.parametrize("key", ["90001-1-1", "90002-1-1"])
def test_calibrated_like_real_recordings(recordings, true_responses, key):
    """Real recordings of this lab: 55-70% of neurons FEV >= 0.15, median FEV ~0.2, oracle ~0.38."""
    rec = recordings[key]
    idx = rec.tier_indices("test")
    fev = metrics.fev(true_responses[key][idx], rec.image_ids[idx], per_neuron=True)
    assert 0.5 <= np.mean(fev >= 0.15) <= 0.7
    assert 0.14 <= np.median(fev) <= 0.26
    assert 0.3 <= metrics.oracle_correlation(true_responses[key][idx], rec.image_ids[idx]) <= 0.45


def test_summary_reports_the_ceilings(tiny_sim):
    summary = json.loads((tiny_sim / "simulation.json").read_text())
    assert summary["preset"] == "tiny" and len(summary["recordings"]) == 2
    for entry in summary["recordings"]:
        test = entry["ceilings"]["test"]
        # Knowing the behaviour beats any image-only model; both beat the jackknife oracle's noise level.
        assert (
            test["with_behavior"]["single_trial_correlation"] > test["image_only"]["single_trial_correlation"]
        )
        assert test["image_only"]["single_trial_correlation"] > test["oracle_correlation"]
        assert 0.8 < test["image_only"]["feve"] < 1.2


def test_competition_roles(recordings, tiny_sim, true_responses):
    image_only, with_behavior = recordings["90001-1-1"], recordings["90002-1-1"]
    for rec in (image_only, with_behavior):
        for tier in ("test", "final_test"):
            assert rec.responses_zeroed(tier)
            assert np.all(true_responses[rec.data_key][rec.tier_indices(tier)].sum(0) > 0)
        assert not rec.responses_zeroed("train")
        hidden = rec.tier_indices("test")
        assert rec.trial_ids[hidden].min() >= 10**6  # presentation order of held-out trials is hashed
        assert set(rec.trial_ids[rec.tier_indices("train")]) <= set(range(rec.n_trials))
    assert not image_only.has_behavior and with_behavior.has_behavior
    truth_behavior, _ = GroundTruth.load(tiny_sim, "90001-1-1").behavior()
    assert np.ptp(truth_behavior[:, 2]) > 1.0  # the mouse still ran; the release zeroes it
    held = load_held_out(tiny_sim / "held_out" / "90001-1-1")
    assert set(held.tiers) == {"test", "final_test"} and held.responses.shape == (2000, 150)


def test_test_images_are_shared_across_recordings(recordings):
    a, b = recordings["90001-1-1"], recordings["90002-1-1"]
    for tier in ("test", "final_test"):
        ids_a, ids_b = a.image_ids[a.tier_indices(tier)], b.image_ids[b.tier_indices(tier)]
        assert set(ids_a) == set(ids_b) and len(set(ids_a)) == 100
        assert np.all(np.unique(ids_a, return_counts=True)[1] == 10)
        first = ids_a[0]
        np.testing.assert_array_equal(
            a.images[np.flatnonzero(a.image_ids == first)[0]],
            b.images[np.flatnonzero(b.image_ids == first)[0]],
        )
    train_a, train_b = (set(r.image_ids[r.tier_indices("train")]) for r in (a, b))
    assert not train_a & train_b  # every recording has its own training images


def test_ground_truth_reproduces_the_stored_expected_responses(tiny_sim, recordings):
    truth = GroundTruth.load(tiny_sim, "90002-1-1")
    rec = recordings["90002-1-1"]
    idx = rec.tier_indices("test")[:50]
    predicted = truth(rec.images[idx], rec.behavior[idx], rec.pupil_center[idx])
    np.testing.assert_allclose(predicted, truth.expected_responses()[idx], rtol=1e-4, atol=1e-6)
    # Image-only track: its release zeroes behaviour, the ground truth still has it.
    other = GroundTruth.load(tiny_sim, "90001-1-1")
    beh, pupil = other.behavior()
    rec1 = recordings["90001-1-1"]
    np.testing.assert_allclose(
        other(rec1.images[:20], beh[:20], pupil[:20]), other.expected_responses()[:20], rtol=1e-4, atol=1e-6
    )


def test_ground_truth_answers_new_images_of_any_size(tiny_sim, recordings):
    truth = GroundTruth.load(tiny_sim, "90002-1-1")
    small = recordings["90002-1-1"].images[:4]
    big = np.repeat(np.repeat(small, 4, axis=2), 4, axis=3)  # the same images at 144 x 256
    np.testing.assert_allclose(truth(big), truth(small), rtol=1e-4, atol=1e-6)
    assert truth(small[:, 0]).shape == (4, 150)
    with pytest.raises(InvalidInput, match="images: shape"):
        truth(small[:, :, :, :, None])
    with pytest.raises(InvalidInput, match="behavior: shape"):
        truth(small, behavior=np.zeros((4, 2)))
    with pytest.raises(InvalidInput, match="data_key"):
        GroundTruth.load(tiny_sim, "12345-1-1")


def test_ground_truth_of_some_neurons_is_their_columns_of_all(tiny_sim, recordings):
    truth = GroundTruth.load(tiny_sim, "90002-1-1")
    rec = recordings["90002-1-1"]
    idx = rec.tier_indices("train")[:12]
    args = (rec.images[idx], rec.behavior[idx], rec.pupil_center[idx])  # behaviour and eye shifts too
    every = truth(*args)
    for columns in ([7], [149, 0, 3, 3], np.arange(150)[::-1]):
        some = truth(*args, columns=np.asarray(columns))
        assert some.shape == (12, len(columns))
        np.testing.assert_allclose(some, every[:, columns], rtol=1e-5, atol=1e-7)
    refusals = (
        ([], "non-empty"),
        ([0.5], "neuron indices"),
        ([150], r"e\.g\. 150\); expected indices in \[0, 150\)"),
        ([3, -1, 149], r"1 indices outside the population \(e\.g\. -1\)"),  # a negative one is named
    )
    for columns, message in refusals:
        with pytest.raises(InvalidInput, match=f"columns: .*{message}"):
            truth(*args, columns=np.asarray(columns))


def _grating(orientation: float, period: float, phase: float, contrast: float = 0.9) -> np.ndarray:
    yy, xx = np.mgrid[0 : GRID[0], 0 : GRID[1]]
    along = xx * np.cos(orientation) + yy * np.sin(orientation)
    return (120 + 55 * contrast * np.cos(2 * np.pi * along / period + phase))[None, None]


def test_neurons_are_simple_and_complex_cells(tiny_sim):
    """Simple cells modulate with grating phase, complex cells barely do."""
    truth = GroundTruth.load(tiny_sim, "90002-1-1")
    pop = truth.population
    phases = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    modulation = []
    for i in range(pop.n_neurons):
        images = np.concatenate([_grating(pop.orientation[i], pop.period[i], p) for p in phases])
        r = truth(images)[:, i]
        modulation.append((r.max() - r.min()) / (r.mean() + 1e-9))
    modulation = np.array(modulation)
    simple, complex_ = pop.simple_weight > 0.8, pop.simple_weight < 0.2
    assert simple.sum() > 10 and complex_.sum() > 10
    assert np.median(modulation[simple]) > 3 * np.median(modulation[complex_])


def test_retinotopy_follows_cortical_position(tiny_sim, recordings):
    pop = GroundTruth.load(tiny_sim, "90002-1-1").population
    xy = recordings["90002-1-1"].cell_motor_coordinates[:, :2]
    design = np.column_stack([xy, np.ones(len(xy))])
    for axis in range(2):
        coef, *_ = np.linalg.lstsq(design, pop.center[:, axis], rcond=None)
        residual = pop.center[:, axis] - design @ coef
        assert 1 - residual.var() / pop.center[:, axis].var() > 0.6


def test_eye_position_shifts_every_receptive_field_together(tiny_sim, recordings):
    truth = GroundTruth.load(tiny_sim, "90002-1-1")
    pop = truth.population
    images = recordings["90002-1-1"].images[:16]
    eye = np.tile(pop.eye_center + np.array([10.0, -5.0], np.float32), (16, 1))
    shifted = truth(images, pupil_center=eye)
    assert np.mean(np.abs(shifted - truth(images))) > 0.05 * np.mean(truth(images))
    shift = pop.shift(eye, 16)[0]
    moved = translate(images[:, 0].astype(np.float32) - 120.0, np.tile(shift, (16, 1))) + 120.0
    np.testing.assert_allclose(truth(moved), shifted, rtol=1e-3, atol=1e-5)


def test_behaviour_modulates_gain_and_noise_is_non_negative_heavy_tailed_and_shared(
    tiny_sim, recordings, true_responses
):
    truth = GroundTruth.load(tiny_sim, "90002-1-1")
    pop = truth.population
    images = recordings["90002-1-1"].images[:8]
    running = np.tile(pop.behavior_mean, (8, 1))
    running[:, 2] += 2 * pop.behavior_std[2]
    ratio = truth(images, behavior=running).mean(0) / truth(images).mean(0)
    np.testing.assert_allclose(np.log(ratio), 2 * pop.beta_running, rtol=1e-3, atol=1e-4)
    assert np.std(pop.beta_running) > 0.1  # heterogeneous

    rec = recordings["90002-1-1"]
    responses = true_responses["90002-1-1"]
    assert responses.min() >= 0
    residual = responses - truth.expected_responses()
    z = (residual - residual.mean(0)) / residual.std(0)
    assert np.median(np.mean(z**4, axis=0)) > 5  # heavier tails than Gaussian (3)
    train = rec.tier_indices("train")
    noise_corr = np.corrcoef(residual[train].T)
    assert noise_corr[np.triu_indices_from(noise_corr, 1)].mean() > 0.005
