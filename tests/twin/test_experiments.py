"""In-silico experiments: the simulated mouse's ground truth recovers its own known parameters, MEIs
reach a known optimum, and the same experiment gives the same numbers on every kind of twin."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import twin
from twin.data.simulation import GroundTruth
from twin.errors import InvalidInput
from twin.experiments import (
    GroundTruthTwin,
    MEIs,
    ReceptiveFields,
    SizeTuning,
    Tuning,
    most_exciting_images,
    orientation_tuning,
    receptive_fields,
    size_tuning,
)
from twin.experiments.mei import gaussian_blur
from twin.experiments.stimuli import grating_patches, gratings, sparse_noise

KEY = "90001-1-1"


@pytest.fixture(scope="module")
def truth_twin(tiny_sim) -> GroundTruthTwin:
    return GroundTruthTwin(tiny_sim, KEY)


@pytest.fixture(scope="module")
def local(tiny_artifact):
    return twin.load(tiny_artifact, threads=1).twin(KEY)


class LinearTwin:
    """A twin with a known answer: responses are linear in the image, w_n . (x - gray) + 1, so under an
    RMS-contrast budget B the most exciting image of neuron n is gray + B w_n / rms(w_n)."""

    def __init__(self, weights: np.ndarray, gray: float = 128.0, requires_behavior: bool = False):
        self.w = weights.astype(np.float64)  # (N, H, W)
        self.gray = gray
        self.requires_behavior = requires_behavior

    def info(self) -> dict[str, Any]:
        n, h, w = self.w.shape
        return {
            "name": "linear",
            "data_key": "0-0-0",
            "n_neurons": n,
            "neuron_ids": list(range(100, 100 + n)),
            "image_size": [h, w],
            "requires": {"behavior": self.requires_behavior, "pupil_center": False},
            "image_mean": self.gray,
            "image_std": 40.0,
        }

    def predict(self, images, behavior=None, pupil_center=None, neurons=None):
        if self.requires_behavior:
            assert behavior is not None and behavior.shape == (len(images), 3)
        r = np.einsum("bhw,nhw->bn", np.asarray(images, np.float64) - self.gray, self.w) + 1.0
        if neurons is not None:
            r = r[:, [int(i) - 100 for i in neurons]]
        return r.astype(np.float32), np.zeros(r.shape, np.float32)

    def gradient(self, images, weights, behavior=None, pupil_center=None):
        return np.einsum("bn,nhw->bhw", np.asarray(weights, np.float64), self.w).astype(np.float32)


def _gabor(h: int, w: int, cx: float, cy: float, theta: float, period: float, sd: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    along = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    envelope = np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / sd**2)
    return envelope * np.cos(2 * np.pi * along / period)


# ----- stimuli -----


def test_gratings_follow_the_ground_truths_orientation_convention():
    images = gratings((36, 64), [0.0, np.pi / 2], [8.0], [0.0, np.pi], gray=120, amplitude=50)
    assert images.shape == (2, 1, 2, 36, 64) and images.dtype == np.float32
    vertical_bars = images[0, 0, 0]  # theta 0: luminance varies along x only
    assert np.allclose(vertical_bars, vertical_bars[:1]) and not np.allclose(
        vertical_bars, vertical_bars[:, :1]
    )
    np.testing.assert_allclose(vertical_bars[:, :-8], vertical_bars[:, 8:], atol=1e-4)  # period 8
    assert np.allclose(images[1, 0, 0], images[1, 0, 0][:, :1])  # theta pi/2: along y only
    np.testing.assert_allclose(images[0, 0, 0] + images[0, 0, 1], 240, atol=1e-4)  # phase pi: inverted
    assert vertical_bars.max() == pytest.approx(170) and vertical_bars.min() == pytest.approx(70)
    with pytest.raises(InvalidInput, match="periods"):
        gratings((36, 64), [0.0], [0.0], [0.0], gray=120, amplitude=50)


def test_sparse_noise_puts_each_square_where_its_centre_says():
    noise = sparse_noise((36, 64), square=4, stride=2, gray=120, low=0, high=255)
    assert noise.images.shape == (2, 17, 31, 36, 64)
    i, j = 5, 9
    on = noise.images[0, i, j]
    ys, xs = np.nonzero(on == 255)
    assert (ys.mean(), xs.mean()) == (noise.y[i], noise.x[j]) and ys.size == 16
    assert np.all(noise.images[1, i, j][ys, xs] == 0) and np.sum(noise.images[1, i, j] != 120) == 16
    with pytest.raises(InvalidInput, match="low, gray, high"):
        sparse_noise((36, 64), square=4, stride=2, gray=120, low=130, high=255)


# ----- the known answers of the simulated mouse -----


def test_grating_patches_put_a_grating_of_each_diameter_on_each_centre():
    patches = grating_patches(
        (36, 64), [[20.0, 10.0]], [0.0], [8.0], [4.0, 60.0], [0.0, np.pi], gray=120, amplitude=50
    )
    assert patches.shape == (1, 2, 2, 36, 64) and patches.dtype == np.float32
    small, large = patches[0, 0, 0], patches[0, 1, 0]
    assert small[10, 20] == pytest.approx(170)  # phase 0 at the centre ...
    assert large[10, 20] == pytest.approx(170)  # ... whatever the diameter
    assert small[10, 25] == 120 and small[30, 60] == 120  # outside the aperture: gray
    assert np.sum(small != 120) <= np.pi * 3**2  # diameter 4, edge antialiased over one pixel
    np.testing.assert_allclose(patches[0, :, 0] + patches[0, :, 1], 240, atol=1e-4)  # phase pi: inverted
    inside = large[:30, :36]  # within 29.5 px of the centre: all in the aperture
    np.testing.assert_allclose(inside[:, :-8], inside[:, 8:], atol=1e-4)  # period 8 along x (orientation 0)
    np.testing.assert_allclose(inside, inside[:1].repeat(30, axis=0), atol=1e-4)
    with pytest.raises(InvalidInput, match="one per centre"):
        grating_patches((36, 64), [[1.0, 1.0]], [0.0, 1.0], [8.0], [4.0], [0.0], gray=120, amplitude=5)


def test_the_ground_truth_twin_answers_the_neurons_asked_for(truth_twin):
    images = np.random.default_rng(0).integers(0, 256, (3, 36, 64)).astype(np.float32)
    every, spread = truth_twin.predict(images)
    assert every.shape == spread.shape == (3, 150) and not spread.any()
    ids = truth_twin.neuron_ids[[5, 0, 149]]
    some, spread = truth_twin.predict(images, neurons=ids)
    assert some.shape == spread.shape == (3, 3)  # the spread too: one column per neuron asked for
    np.testing.assert_allclose(some, every[:, [5, 0, 149]], rtol=1e-5, atol=1e-7)
    with pytest.raises(InvalidInput, match="neurons: id"):
        truth_twin.predict(images, neurons=[int(truth_twin.neuron_ids.max()) + 1])


def test_ground_truth_tuning_recovers_each_neurons_orientation_and_period(truth_twin):
    tuning = orientation_tuning(truth_twin)
    assert tuning.responses.shape == (16, 5, 8, 150)
    scores = truth_twin.score_tuning(tuning)
    assert scores["selective_fraction"] > 0.9
    assert scores["orientation_error_deg_median"] < 1.0 and scores["orientation_error_deg_p90"] < 5.0
    assert scores["period_rank_correlation"] > 0.9
    # F1/F0 tells simple from complex cells at low contrast, before responses saturate
    low = truth_twin.score_tuning(orientation_tuning(truth_twin, amplitude=5.0))
    assert low["simple_vs_complex_auc"] > 0.9


def test_ground_truth_receptive_fields_are_centred_on_the_true_centres(truth_twin):
    fields = receptive_fields(truth_twin)
    assert fields.on.shape == fields.off.shape == (150, 17, 31)
    scores = truth_twin.score_receptive_fields(fields)
    assert scores["mapped_fraction"] == 1.0
    assert scores["center_error_px_median"] < 0.5 and scores["within_2px_fraction"] > 0.95


def test_a_shuffled_truth_scores_at_chance(truth_twin):
    """The scores can fail: measured on neurons but compared with other neurons' parameters."""
    tuning = orientation_tuning(truth_twin)
    rolled = Tuning(
        np.roll(tuning.neuron_ids, 1), tuning.orientations, tuning.periods, tuning.phases,
        tuning.responses, tuning.gray, tuning.amplitude, tuning.image_size,
    )  # fmt: skip
    scores = truth_twin.score_tuning(rolled)
    assert scores["orientation_error_deg_median"] > 20 and abs(scores["period_rank_correlation"]) < 0.3


def test_ground_truth_size_tuning_follows_each_neurons_receptive_field_size(tiny_sim, truth_twin):
    sizes = size_tuning(truth_twin)  # centres, orientations and periods measured first
    assert sizes.responses.shape == (9, 8, 150) and sizes.curves.shape == (150, 9)
    envelope = GroundTruth.load(tiny_sim, KEY).population.envelope
    assert np.corrcoef(_ranks(envelope), _ranks(sizes.preferred_diameter))[0, 1] > 0.7
    itself = truth_twin.score_size_tuning(sizes)
    assert itself["curve_correlation_median"] == pytest.approx(1.0)
    assert itself["preferred_diameter_rank_correlation"] == pytest.approx(1.0)
    assert itself["suppression_index_error_median"] == 0
    # the score can fail: each curve compared with another neuron's, measured at that neuron's centre
    rolled = truth_twin.score_size_tuning(replace(sizes, neuron_ids=np.roll(sizes.neuron_ids, 1)))
    assert rolled["curve_correlation_median"] < 0.6 and rolled["suppression_index_error_median"] > 0.3


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values))


def test_a_trained_twin_is_scored_against_the_truth(local, truth_twin):
    scores = truth_twin.score_receptive_fields(receptive_fields(local))
    # a 1-epoch, 8-channel plumbing model: scored, not judged
    assert scores["neurons"] == 150 and 0 <= scores["mapped_fraction"] <= 1
    assert scores["center_error_px_median"] is None or scores["center_error_px_median"] >= 0


# ----- most exciting images -----


def test_meis_reach_the_known_optimum_of_a_linear_twin():
    h, w = 20, 30
    weights = np.stack(
        [_gabor(h, w, 10, 8, 0.3, 8, 3), _gabor(h, w, 20, 12, 1.9, 6, 2.5), _gabor(h, w, 15, 10, 1.0, 10, 4)]
    )
    model = LinearTwin(weights)
    budget = 10.0
    meis = most_exciting_images(model, [100, 102], steps=60, rms_contrast=budget, blur=0, start="gray")
    for k, n in enumerate((0, 2)):
        optimum = 128.0 + budget * weights[n] / np.sqrt(np.mean(weights[n] ** 2))
        deviation = (meis.images[k] - 128.0).ravel()
        cosine = (
            deviation @ (optimum - 128.0).ravel() / np.linalg.norm(deviation) / np.linalg.norm(optimum - 128)
        )
        assert cosine > 0.999
        assert np.sqrt(np.mean(deviation**2)) == pytest.approx(budget, rel=1e-3)
        best = model.predict(optimum[None], neurons=[100 + n])[0][0, 0]
        assert meis.activation[k] == pytest.approx(best, rel=1e-3)
    assert np.all(meis.start == pytest.approx(1.0))  # gray: zero drive
    assert meis.trace.shape == (61, 2) and np.all(np.max(meis.trace, axis=0) == meis.activation)


def test_mei_blur_gives_smoother_images_and_the_pixel_range_holds():
    rng = np.random.default_rng(0)
    model = LinearTwin(rng.normal(size=(2, 20, 30)))  # white-noise weights: a rough optimum
    sharp = most_exciting_images(model, [100], steps=30, rms_contrast=60, blur=0, seed=1)
    smooth = most_exciting_images(model, [100], steps=30, rms_contrast=60, blur=2.0, seed=1)

    def roughness(image: np.ndarray) -> float:
        return float(np.mean(np.abs(np.diff(image, axis=-1))))

    assert roughness(smooth.images) < 0.5 * roughness(sharp.images)
    for meis in (sharp, smooth):
        assert meis.images.min() >= 0 and meis.images.max() <= 255
        assert np.sqrt(np.mean((meis.images - 128.0) ** 2)) <= 60 * (1 + 1e-5)
    assert sharp.activation[0] > smooth.activation[0]  # the prior costs drive on a rough optimum


def test_gaussian_blur_keeps_the_mean_and_is_symmetric():
    impulse = np.zeros((1, 21, 21), np.float32)
    impulse[0, 10, 10] = 1
    blurred = gaussian_blur(impulse, 1.5)
    assert blurred.sum() == pytest.approx(1, rel=1e-5)
    np.testing.assert_allclose(blurred[0], blurred[0].T, atol=1e-7)
    np.testing.assert_allclose(blurred[0], blurred[0, ::-1], atol=1e-7)
    assert gaussian_blur(impulse, 0) is impulse


def test_meis_of_a_trained_twin_drive_it_beyond_natural_images(local, truth_twin):
    ids = local.neuron_ids[:6]
    meis = most_exciting_images(local, ids, steps=40)
    assert meis.images.shape == (6, 36, 64) and np.all(meis.activation > meis.start)
    natural = local.predict(truth_twin.natural_images()[:400], neurons=ids)[0].max(axis=0)
    assert np.all(meis.activation > natural)
    scores = truth_twin.score_meis(meis, truth_twin.natural_images()[:400])
    assert scores["neurons"] == 6 and len(scores["ratio_to_best_natural"]) == 6


def test_mei_filter_alignment_knows_each_neurons_true_receptive_field(tiny_sim, truth_twin):
    """MEIs of a twin that has the neurons' true filters are their Gabors (alignment 1); MEIs of one that
    has other neurons' filters, and noise, score far lower. The measure can fail, where the response
    ratio saturates."""
    ids = truth_twin.neuron_ids[:8]
    filters = GroundTruth.load(tiny_sim, KEY).filters()  # (P, 2N): even, then odd
    n = truth_twin.n_neurons
    gray = truth_twin.info()["image_mean"]

    def meis_of(columns: np.ndarray) -> MEIs:
        linear = LinearTwin(filters[:, columns].T.reshape(-1, 36, 64), gray=gray)
        found = most_exciting_images(linear, range(100, 100 + columns.size), rms_contrast=4.0, blur=0)
        return replace(found, neuron_ids=ids)  # scored as the recording's neurons

    right = truth_twin.score_meis(meis_of(np.arange(8)), truth_twin.natural_images()[:50])
    assert min(right["filter_alignment"]) > 0.999 and len(right["ratio_to_best_natural"]) == 8
    odd = truth_twin.score_meis(meis_of(np.arange(8) + n), truth_twin.natural_images()[:50])
    assert odd["filter_alignment_median"] > 0.999  # the other phase of the same neurons: as good
    wrong = truth_twin.score_meis(meis_of(np.arange(8, 16)), truth_twin.natural_images()[:50])
    assert wrong["filter_alignment_median"] < 0.3
    noise = np.random.default_rng(0).normal(gray, 30, (8, 144, 256))  # any resolution
    assert np.all(truth_twin.filter_alignment(noise, ids) < 0.1)
    assert np.all(truth_twin.filter_alignment(np.full((8, 36, 64), gray), ids) == 0)
    with pytest.raises(InvalidInput, match=r"^images: shape \(7, 36, 64\).*expected \(8, H, W\)"):
        truth_twin.filter_alignment(noise[:7, :36, :64], ids)
    with pytest.raises(InvalidInput, match=r"^neurons: id -1 is not a neuron of recording 90001-1-1"):
        truth_twin.filter_alignment(noise[:1], [-1])


# ----- interface, errors, files -----


def test_behaviour_is_the_condition_of_every_stimulus():
    model = LinearTwin(np.ones((2, 8, 8)), requires_behavior=True)
    with pytest.raises(InvalidInput, match=r"^behavior: None; linear \(0-0-0\) needs it"):
        receptive_fields(model, square=2, stride=2)
    fields = receptive_fields(model, square=2, stride=2, behavior=[1.0, 0.0, 2.0])
    assert fields.on.shape == (2, 4, 4)
    with pytest.raises(InvalidInput, match=r"^behavior: .*expected 3 finite numbers"):
        receptive_fields(model, behavior=[1.0, 0.0])


class _Recording(LinearTwin):
    """LinearTwin that says its training trials' mean condition and keeps the behaviour it was shown."""

    def info(self) -> dict[str, Any]:
        return super().info() | {"mean_condition": {"behavior": [2.0, 0.5, 7.0], "pupil_center": None}}

    def predict(self, images, behavior=None, pupil_center=None, neurons=None):
        self.shown = behavior
        return super().predict(images, behavior, pupil_center, neurons)


def test_mean_is_the_condition_the_twin_says():
    model = _Recording(np.ones((2, 8, 8)), requires_behavior=True)
    receptive_fields(model, square=2, stride=2, behavior="mean")
    np.testing.assert_array_equal(model.shown, np.tile(np.float32([2.0, 0.5, 7.0]), (len(model.shown), 1)))
    with pytest.raises(InvalidInput, match=r"^pupil_center: 'mean'; linear does not say its training"):
        receptive_fields(model, behavior="mean", pupil_center="mean")
    with pytest.raises(InvalidInput, match=r"^behavior: 'median'; expected numbers in raw units or 'mean'"):
        receptive_fields(model, behavior="median")
    with pytest.raises(InvalidInput, match=r"^behavior: 'mean'; linear does not say"):
        receptive_fields(LinearTwin(np.ones((2, 8, 8)), requires_behavior=True), behavior="mean")
    with pytest.raises(InvalidInput, match=r"needs it: .* or 'mean': its training trials' mean"):
        receptive_fields(model)


def test_the_ground_truth_says_its_recordings_mean_condition(tiny_sim, tiny_paths):
    from twin.data import load_recording

    key = "90002-1-1"
    stats = load_recording(tiny_paths[key], progress=False).statistics
    mean = GroundTruthTwin(tiny_sim, key).info()["mean_condition"]
    for name in ("behavior", "pupil_center"):
        np.testing.assert_allclose(mean[name], stats[name]["all"]["mean"], rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: orientation_tuning(t, neurons=[10**6]), r"^neurons: ids \[1000000\] are not neurons"),
        (lambda t: orientation_tuning(t, neurons=[]), r"^neurons: \[\]; expected a non-empty"),
        (lambda t: orientation_tuning(t, orientations=1), r"^orientations, phases"),
        (lambda t: receptive_fields(t, square=100), r"^square: 100"),
        (lambda t: most_exciting_images(t, None), r"^neurons: None"),
        (lambda t: most_exciting_images(t, [t.neuron_ids[0]], step=2), r"^step: 2"),
        (lambda t: most_exciting_images(t, [t.neuron_ids[0]], start="zeros"), r"^start: 'zeros'"),
        (lambda t: most_exciting_images(t, [t.neuron_ids[0]], rms_contrast=-1), r"^rms_contrast: -1"),
        (lambda t: orientation_tuning(object()), r"^twin: object; expected a twin"),
        (lambda t: size_tuning(t, diameters=[8, 4]), r"^diameters: \[8.0, 4.0\]; expected at least 2"),
        (lambda t: size_tuning(t, [t.neuron_ids[0]], centers=[1, 2, 3]), r"^centers: shape \(3,\)"),
        (lambda t: size_tuning(t, phases=0), r"^phases: 0"),
    ],
    ids=[
        "unknown-neuron",
        "no-neurons",
        "orientations",
        "square",
        "mei-neurons",
        "step",
        "start",
        "budget",
        "not-a-twin",
        "diameters",
        "centers",
        "phases",
    ],
)
def test_bad_arguments_are_refused_naming_the_field(local, call, message):
    with pytest.raises(InvalidInput, match=message):
        call(local)


def test_stimuli_need_the_twins_image_statistics():
    model = LinearTwin(np.ones((2, 8, 8)))
    model.info = lambda: {k: v for k, v in LinearTwin.info(model).items() if k != "image_mean"}
    with pytest.raises(InvalidInput, match=r"^image_mean: missing from the twin's info\(\)"):
        orientation_tuning(model)


def test_an_mei_needs_a_twin_with_a_gradient(truth_twin):
    with pytest.raises(InvalidInput, match=r"^twin: GroundTruthTwin; expected a twin with gradient\(\)"):
        most_exciting_images(truth_twin, truth_twin.neuron_ids[:2])


def test_results_save_and_load_whole(local, tmp_path):
    results = [
        orientation_tuning(local, local.neuron_ids[:5], orientations=4, phases=4),
        receptive_fields(local, local.neuron_ids[:5], square=6, stride=6),
        most_exciting_images(local, local.neuron_ids[:2], steps=3),
        size_tuning(local, local.neuron_ids[:3], diameters=[4, 16], phases=2),
    ]
    for result, kind in zip(results, (Tuning, ReceptiveFields, MEIs, SizeTuning), strict=True):
        path = result.save(tmp_path / f"{kind.__name__}.npz")
        loaded = kind.load(path)
        for name, value in vars(result).items():
            np.testing.assert_array_equal(getattr(loaded, name), value)
        assert loaded.summary() == result.summary()
        json.dumps(result.summary())  # plain JSON for the CLI's report
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "MEIs.npz",
        "ReceptiveFields.npz",
        "SizeTuning.npz",
        "Tuning.npz",
    ]


# ----- the command -----


def _twin_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twin.cli", "experiment", *map(str, args)], capture_output=True, text=True
    )


def test_the_command_runs_each_experiment_and_scores_it_against_the_truth(tiny_artifact, tiny_sim, tmp_path):
    out = tmp_path / "out"
    common = ["--data-key", KEY, "--out", out, "--compare", tiny_sim]
    done = _twin_cli("rf", tiny_artifact, *common, "--neurons", "1,2,3")
    assert done.returncode == 0, done.stderr
    assert "receptive fields of 3 neurons" in done.stdout and "center_error_px_median" in done.stdout
    document = json.loads((out / "rf.json").read_text())
    assert document["summary"]["neuron_ids"] == [1, 2, 3] and document["ground_truth"]["neurons"] == 3
    assert ReceptiveFields.load(out / "rf.npz").on.shape == (3, 17, 31)
    assert (out / "rf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    done = _twin_cli("tuning", tiny_sim, *common, "--orientations", "8", "--phases", "4", "--no-plot")
    assert done.returncode == 0, done.stderr  # the simulation folder itself: the ground truth answers
    document = json.loads((out / "tuning.json").read_text())
    assert (
        document["ground_truth"]["orientation_error_deg_median"] < 1.0 and not (out / "tuning.png").exists()
    )

    done = _twin_cli("mei", tiny_artifact, *common, "--count", "2", "--steps", "5")
    assert done.returncode == 0, done.stderr
    assert MEIs.load(out / "mei.npz").images.shape == (2, 36, 64)
    assert json.loads((out / "mei.json").read_text())["ground_truth"]["natural_images"] > 0

    done = _twin_cli("size", tiny_artifact, *common, "--neurons", "1,2,3", "--phases", "4")
    assert done.returncode == 0, done.stderr
    assert "size tuning of 3 neurons" in done.stdout and "curve_correlation_median" in done.stdout
    document = json.loads((out / "size.json").read_text())
    assert (
        document["parameters"]["diameters"][-1] == 60 and len(document["summary"]["suppression_index"]) == 3
    )
    assert SizeTuning.load(out / "size.npz").responses.shape == (9, 4, 3)
    assert (out / "size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_shows_stimuli_at_the_mean_condition_and_records_it(tiny_artifact, tmp_path):
    key = "90002-1-1"
    mean = twin.load(tiny_artifact, threads=1).twin(key).info()["mean_condition"]
    out = tmp_path / "out"
    args = ["--data-key", key, "--out", out, "--neurons", "1,2", "--no-plot"]
    done = _twin_cli("rf", tiny_artifact, *args, "--behavior", "mean", "--pupil-center", "mean")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "rf.json").read_text())["condition"] == mean
    done = _twin_cli("rf", tiny_artifact, *args, "--behavior", "1,2,3")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "rf.json").read_text())["condition"] == {
        "behavior": [1.0, 2.0, 3.0],
        "pupil_center": None,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rf", "{sim}", "--out", "{out}"], "error: data_key: None; simulation"),
        (["rf", "nowhere", "--out", "{out}"], "error: source: 'nowhere'; expected an artifact folder"),
        (["mei", "{art}", "--data-key", KEY, "--out", "{out}"], "error: neurons: none given"),
        (
            ["mei", "{sim}", "--data-key", KEY, "--count", "1", "--out", "{out}"],
            "error: twin: GroundTruthTwin",
        ),
        (["rf", "{art}", "--data-key", KEY, "--neurons", "1,x", "--out", "{out}"], "'--neurons': '1,x'"),
        (
            ["rf", "{art}", "--data-key", KEY, "--behavior", "1,2", "--out", "{out}"],
            "expected 3 comma-separated numbers (pupil, its change, running) or 'mean'",
        ),
        (
            ["rf", "{art}", "--data-key", KEY, "--pupil-center", "middle", "--out", "{out}"],
            "'middle'; expected comma-separated numbers or 'mean'",
        ),
        (
            ["size", "{sim}", "--data-key", KEY, "--diameters", "8,4", "--out", "{out}"],
            "error: diameters: [8.0, 4.0]; expected at least 2 increasing sizes",
        ),
    ],
    ids=["data-key", "source", "mei-neurons", "no-gradient", "neuron-ids", "behavior", "pupil", "diameters"],
)
def test_the_command_refuses_bad_input_with_one_line_and_status_2(
    tiny_artifact, tiny_sim, tmp_path, args, message
):
    fill = {"sim": str(tiny_sim), "art": str(tiny_artifact), "out": str(tmp_path / "out")}
    done = _twin_cli(*(a.format(**fill) for a in args))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
