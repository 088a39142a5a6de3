"""Batch scoring and SENSORIUM submissions: files that round-trip exactly, scores that match the
simulated mouse's known ceilings, refusals that name what is wrong, and a killed job that resumes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import twin
from twin import metrics
from twin.data import GroundTruth, load_recording, responses_with_held_out
from twin.errors import FormatError, InvalidInput
from twin.scoring import (
    Submission,
    predict_to_file,
    read_submission,
    score_submission,
    tier_submission,
    write_submission,
)

KEY = "90002-1-1"


@pytest.fixture(scope="module")
def recording_path(tiny_paths) -> Path:
    return tiny_paths[KEY]


@pytest.fixture(scope="module")
def local(tiny_artifact):
    return twin.load(tiny_artifact, threads=1).twin(KEY)


@pytest.fixture(scope="module")
def truth_submission(tiny_sim, recording_path) -> Submission:
    """The ground truth's expected responses of the test tier, as a submission."""
    recording = load_recording(recording_path, progress=False)
    idx = recording.tier_indices("test")
    expected = np.asarray(GroundTruth.load(tiny_sim, KEY).expected_responses()[idx], np.float32)
    return Submission(recording.trial_ids[idx], recording.image_ids[idx], expected, recording.neuron_ids)


def test_the_ground_truth_scores_the_simulations_ceiling_in_any_row_and_column_order(
    tiny_sim, truth_submission, recording_path
):
    ceiling = next(
        r
        for r in json.loads((tiny_sim / "simulation.json").read_text())["recordings"]
        if r["data_key"] == KEY
    )["ceilings"]["test"]["with_behavior"]
    rows = np.random.default_rng(0).permutation(len(truth_submission.trial_ids))
    columns = np.random.default_rng(1).permutation(len(truth_submission.neuron_ids))
    shuffled = Submission(
        truth_submission.trial_ids[rows],
        truth_submission.image_ids[rows],
        truth_submission.predictions[rows][:, columns],
        truth_submission.neuron_ids[columns],
    )
    for submission in (truth_submission, shuffled):
        scores = score_submission(submission, recording_path, "test")
        for name in ("single_trial_correlation", "correlation_to_average", "feve"):
            assert scores[name] == pytest.approx(ceiling[name], abs=1e-5), name
        assert scores["n_trials"] == len(rows) and scores["data_key"] == KEY


def test_a_twins_submission_is_its_predictions_and_scores_like_direct_evaluation(
    local, recording_path, tmp_path
):
    submission = tier_submission(local, recording_path, "test", batch=64)
    recording = load_recording(recording_path, progress=False)
    idx = recording.tier_indices("test")
    expected, _ = local.predict(np.asarray(recording.images[idx]))
    np.testing.assert_array_equal(submission.predictions, expected)
    np.testing.assert_array_equal(submission.trial_ids, recording.trial_ids[idx])

    path = write_submission(submission, tmp_path / "submission_file_live_test.csv")
    header = path.read_text().splitlines()[0]
    assert header == "trial_indices,image_ids,prediction,neuron_ids"
    back = read_submission(path)
    for name in ("trial_ids", "image_ids", "predictions", "neuron_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(submission, name))  # float32 exactly

    responses = responses_with_held_out(recording, recording_path)[idx]
    direct = metrics.score(responses, expected, recording.image_ids[idx]).to_dict()
    scored = score_submission(back, recording_path, "test", per_neuron=True)
    for name, value in direct.items():
        assert (
            scored[name] == pytest.approx(value, abs=1e-9)
            if isinstance(value, float)
            else scored[name] == value
        )
    assert scored["per_neuron"]["single_trial_correlation"].shape == (150,)


def _edit(path: Path, line: int, field: int, value: str) -> Path:
    """A copy of the CSV at `path` with one field changed: bad-<line>-<field>.csv beside it."""
    import csv

    out = path.with_name(f"bad-{line}-{field}.csv")
    rows = list(csv.reader(path.open(newline="")))
    rows[line - 1][field] = value
    with out.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return out


def test_bad_submission_files_are_refused_naming_file_and_line(local, recording_path, tmp_path):
    good = write_submission(tier_submission(local, recording_path, "test"), tmp_path / "good.csv")
    cases = [
        (
            _edit(good, 1, 2, "predictions"),
            r"bad-1-2.csv: header \['trial_indices', 'image_ids', 'predictions'",
        ),
        (_edit(good, 3, 2, "[0.1, oops]"), r"bad-3-2.csv:3 prediction: '\[0.1, oops\]'; expected a list"),
        (_edit(good, 4, 2, "[0.1, 0.2]"), r"bad-4-2.csv:4: 2 predictions; expected 150"),
        (_edit(good, 5, 0, "x7"), r"bad-5-0.csv:5: trial_indices, image_ids \['x7'"),
        (
            _edit(good, 6, 3, "[" + ", ".join(map(str, range(150))) + "]"),
            r"bad-6-3.csv:6: neuron_ids differ",
        ),
        (_edit(good, 7, 2, "[" + ", ".join(["NaN"] * 150) + "]"), r"bad-7-2.csv: predictions: contain NaN"),
    ]
    for path, message in cases:
        with pytest.raises(FormatError, match=message):
            read_submission(path)


def test_a_submission_must_cover_the_tier_and_its_neurons(truth_submission, recording_path, tmp_path):
    s = truth_submission
    cases = [
        (
            Submission(s.trial_ids[1:], s.image_ids[1:], s.predictions[1:], s.neuron_ids),
            r"^trial_indices: 1 trials",
        ),
        (
            Submission(
                s.trial_ids[[0, *range(len(s.trial_ids) - 1)]], s.image_ids, s.predictions, s.neuron_ids
            ),
            r"^trial_indices: some trials appear twice",
        ),
        (Submission(s.trial_ids, s.image_ids, s.predictions[:, 1:], s.neuron_ids[1:]), r"^neuron_ids: 1 of"),
        (Submission(s.trial_ids, s.image_ids + 1, s.predictions, s.neuron_ids), r"^image_ids: do not match"),
    ]
    for submission, message in cases:
        with pytest.raises(InvalidInput, match=message):
            score_submission(submission, recording_path, "test")
    alone = tmp_path / "alone" / recording_path.name  # no held_out/ beside it: the test tier is unknown
    shutil.copytree(recording_path, alone)
    with pytest.raises(InvalidInput, match=r"^tier: 'test' of 90002-1-1 has no responses"):
        score_submission(s, alone, "test")


# ----- batch scoring -----


class Crashing:
    """The real twin, stopped by an error after `calls` predictions (like a job that dies)."""

    def __init__(self, inner, calls: int | None):
        self.inner, self.calls, self.images = inner, calls, 0

    def info(self):
        return self.inner.info()

    def predict(self, images, **kwargs):
        if self.calls is not None and self.calls == 0:
            raise RuntimeError("killed")
        if self.calls is not None:
            self.calls -= 1
        self.images += len(images)
        return self.inner.predict(images, **kwargs)


def test_batch_scoring_writes_what_the_twin_predicts_and_resumes_where_it_stopped(local, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (500, 36, 64)).astype(np.uint8)
    out, std = tmp_path / "r.npy", tmp_path / "s.npy"
    with pytest.raises(RuntimeError, match="killed"):
        predict_to_file(Crashing(local, 3), images, out, std_out=std, batch=64, progress=False)
    assert not out.exists() and not std.exists()  # nothing half-written under the names
    state = json.loads((tmp_path / ".r.npy.progress.json").read_text())
    assert state["done"] == 192 and state["total"] == 500
    resumed = Crashing(local, None)
    predict_to_file(resumed, images, out, std_out=std, batch=64, progress=False)
    assert resumed.images == 500 - 192  # the first three chunks were not predicted again
    mean, spread = local.predict(images)
    np.testing.assert_array_equal(np.load(out), mean)
    np.testing.assert_array_equal(np.load(std), spread)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npy", "s.npy"]  # no progress or partial files


def test_batch_scoring_refuses_to_resume_another_job(local, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (300, 36, 64)).astype(np.uint8)
    out = tmp_path / "r.npy"
    with pytest.raises(RuntimeError):
        predict_to_file(Crashing(local, 1), images, out, batch=100, progress=False)
    other = images.copy()
    other[-1] = 0
    with pytest.raises(InvalidInput, match=r"^out: .*another job \(changed: images\)"):
        predict_to_file(local, other, out, batch=100, progress=False)
    with pytest.raises(InvalidInput, match=r"changed: neurons"):
        predict_to_file(local, images, out, neurons=local.neuron_ids[:3], batch=100, progress=False)
    predict_to_file(local, other, out, batch=100, restart=True, progress=False)
    np.testing.assert_array_equal(np.load(out), local.predict(other)[0])
    ids = local.neuron_ids[[5, 1]]
    predict_to_file(local, other, tmp_path / "two.npy", neurons=ids, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "two.npy"), local.predict(other, neurons=ids)[0])
    with pytest.raises(InvalidInput, match=r"^behavior: shape \(2, 3\)"):
        predict_to_file(local, images, tmp_path / "x.npy", behavior=np.zeros((2, 3)), progress=False)


def _twin(*args) -> list[str]:
    return [sys.executable, "-m", "twin.cli", *map(str, args)]


def test_a_killed_predict_command_resumes_and_loses_nothing(tiny_artifact, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6000, 36, 64)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    command = _twin("predict", tiny_artifact, "--data-key", KEY, "--images", tmp_path / "images.npy",
                    "--out", tmp_path / "r.npy", "--batch", "8", "--quiet")  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    progress = tmp_path / ".r.npy.progress.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        progress.is_file() and json.loads(progress.read_text())["done"] > 0
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(progress.read_text())["done"]
    assert 0 < done < 6000 and not (tmp_path / "r.npy").exists()
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "wrote responses (6000, 150)" in finished.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), local_predict(tiny_artifact, images))
    assert not progress.exists()


def local_predict(artifact: Path, images: np.ndarray) -> np.ndarray:
    return twin.load(artifact, threads=1).twin(KEY).predict(images)[0]


def test_the_submission_commands_write_and_score_the_benchmarks_files(
    tiny_artifact, recording_path, tmp_path
):
    done = subprocess.run(
        _twin("submission", "write", tiny_artifact, "--data", recording_path, "--out", tmp_path),
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["submission_file_final_test.csv", "submission_file_live_test.csv"]
    scored = subprocess.run(
        _twin("submission", "score", tmp_path / "submission_file_final_test.csv", "--data", recording_path,
              "--tier", "final_test", "--json"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    expected = score_submission(
        tier_submission(twin.load(tiny_artifact).twin(KEY), recording_path, "final_test"),
        recording_path,
        "final_test",
    )
    assert result["tier"] == "final_test" and result["correlation_to_average"] == pytest.approx(
        expected["correlation_to_average"], abs=1e-9
    )
    wrong_tier = subprocess.run(
        _twin("submission", "score", tmp_path / "submission_file_final_test.csv", "--data", recording_path),
        capture_output=True, text=True,
    )  # fmt: skip
    assert wrong_tier.returncode == 2 and wrong_tier.stderr.startswith("error: trial_indices: 1000 trials")
