"""Held-out evaluation on the tiny simulated mouse, with the ground truth as the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.heldout import HeldOutData
from twin.data import GroundTruth
from twin.errors import InvalidInput, ModelNotFound


@pytest.fixture(scope="module")
def held_out(tiny_sim) -> HeldOutData:
    return HeldOutData.load(tiny_sim)


def test_loads_every_recording_with_its_held_out_tiers(held_out, tiny_paths):
    assert sorted(held_out.data_keys) == sorted(tiny_paths)
    for key in tiny_paths:
        recording = held_out.recording(key)
        # Competition recordings ship test and final_test zeroed: restored from held_out/<key>.
        assert recording.tiers == ["validation", "test", "final_test"]
        assert recording.n_trials("test") == 1000


def test_ground_truth_scores_far_above_a_shuffled_predictor(held_out, tiny_sim):
    summary = json.loads((tiny_sim / "simulation.json").read_text())
    ceilings = {r["data_key"]: r["ceilings"] for r in summary["recordings"]}
    for key in held_out.data_keys:
        truth = GroundTruth.load(tiny_sim, key)
        seen = []

        def predict(images, behavior, pupil_center, truth=truth, seen=seen):
            seen.append((images.shape, images.dtype, behavior is None))
            return truth(images, behavior, pupil_center)

        def shuffled(images, behavior, pupil_center, truth=truth):
            order = np.random.default_rng(0).permutation(len(images))
            return truth(images[order], behavior, pupil_center)

        result = held_out.evaluate(key, predict, tier="test", batch_size=300)
        baseline = held_out.evaluate(key, shuffled, tier="test", batch_size=300)
        assert [s[0] for s in seen] == [(300, 1, 36, 64)] * 3 + [(100, 1, 36, 64)]
        assert all(dtype == np.uint8 for _, dtype, _ in seen)  # raw pixels, recording resolution
        # The image-only recording zeroes behaviour: its model gets none rather than zeros.
        assert all(no_behavior == (key == "90001-1-1") for _, _, no_behavior in seen)
        assert result["n_trials"] == 1000 and result["n_images"] == 100 and result["n_neurons"] == 150
        assert result["single_trial_correlation"] > 0.35
        assert result["correlation_to_average"] > 0.75
        assert result["feve"] > 0.5
        assert result["single_trial_correlation"] > baseline["single_trial_correlation"] + 0.3
        assert result["correlation_to_average"] > baseline["correlation_to_average"] + 0.6
        assert baseline["feve"] < 0
        if key == "90002-1-1":  # behaviour released: exactly the simulation's own ceiling
            ceiling = ceilings[key]["test"]["with_behavior"]
            for name in ("single_trial_correlation", "correlation_to_average", "feve"):
                assert result[name] == pytest.approx(ceiling[name], rel=1e-4)
        assert "responses" not in result and not any(isinstance(v, np.ndarray) for v in result.values())


def test_per_neuron_scores_on_request(held_out, tiny_sim):
    truth = GroundTruth.load(tiny_sim, "90002-1-1")
    result = held_out.evaluate("90002-1-1", truth, tier="final_test", per_neuron=True)
    per_neuron = result["per_neuron"]
    assert set(per_neuron) == {"neuron_ids", "single_trial_correlation", "correlation_to_average", "feve"}
    assert all(len(v) == 150 for v in per_neuron.values())
    np.testing.assert_allclose(
        per_neuron["single_trial_correlation"].mean(), result["single_trial_correlation"]
    )
    passing = ~np.isnan(per_neuron["feve"])
    assert passing.mean() == pytest.approx(result["fev_fraction_above_threshold"])
    np.testing.assert_allclose(per_neuron["feve"][passing].mean(), result["feve"])


def test_a_model_answering_for_a_subset_of_neurons(held_out, tiny_sim):
    truth = GroundTruth.load(tiny_sim, "90001-1-1")
    ids = held_out.recording("90001-1-1").neuron_ids[::-1][:40]  # reversed, 40 neurons
    columns = [int(np.flatnonzero(held_out.recording("90001-1-1").neuron_ids == i)[0]) for i in ids]

    def predict(images, behavior, pupil_center):
        return truth(images, behavior, pupil_center)[:, columns]

    result = held_out.evaluate("90001-1-1", predict, tier="validation", per_neuron=True, neuron_ids=ids)
    assert result["n_neurons"] == 40 and list(result["per_neuron"]["neuron_ids"]) == list(ids)
    assert result["single_trial_correlation"] > 0.2
    assert result["feve"] is None and result["per_neuron"]["feve"] is None  # validation has no repeats


def test_errors_name_what_was_expected(held_out, tiny_sim):
    truth = GroundTruth.load(tiny_sim, "90001-1-1")
    with pytest.raises(ModelNotFound, match=r"data_key: '1-2-3' has no held-out data here; expected one of"):
        held_out.evaluate("1-2-3", truth)
    with pytest.raises(
        InvalidInput, match=r"tier: 'train' has no responses held by the server for 90001-1-1"
    ):
        held_out.evaluate("90001-1-1", truth, tier="train")
    with pytest.raises(InvalidInput, match=r"tier: 'bogus' is not a tier"):
        held_out.evaluate("90001-1-1", truth, tier="bogus")
    with pytest.raises(InvalidInput, match=r"predictions: shape \(256, 149\); expected \(256, 150\)"):
        held_out.evaluate("90001-1-1", lambda images, b, p: truth(images)[:, 1:])
    with pytest.raises(InvalidInput, match=r"neuron_ids: 1 ids not in recording 90001-1-1 \(e.g. \[9999\]\)"):
        held_out.evaluate("90001-1-1", truth, neuron_ids=[1, 9999])


def test_a_single_recording_folder(tiny_paths):
    # One recording on its own still finds held_out/<data key> beside it for its zeroed test tier.
    data = HeldOutData.load(tiny_paths["90001-1-1"], tiers=["validation", "test"])
    assert data.data_keys == ["90001-1-1"] and data.recording("90001-1-1").tiers == ["validation", "test"]
