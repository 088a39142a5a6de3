"""Reading and writing SENSORIUM recordings: round trips (folder and zip), the cache, real-data variants."""

from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest

from twin.data import Recording, compute_statistics, data_key_from_name, load_recording, write_recording
from twin.data.cache import cache_root
from twin.errors import FormatError, InvalidInput


@pytest.fixture(scope="module")
def behavior_recording(tiny_paths) -> Recording:
    return load_recording(tiny_paths["90002-1-1"], progress=False)


@pytest.fixture()
def small(behavior_recording) -> Recording:
    """40 trials of every tier, in memory."""
    idx = np.concatenate(
        [behavior_recording.tier_indices(t)[:10] for t in ("train", "validation", "test", "final_test")]
    )
    return behavior_recording.subset(idx)


def assert_same(a: Recording, b: Recording) -> None:
    assert a.data_key == b.data_key
    for name in (
        "images",
        "responses",
        "behavior",
        "pupil_center",
        "image_ids",
        "trial_ids",
        "neuron_ids",
        "cell_motor_coordinates",
    ):
        np.testing.assert_array_equal(
            np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name
        )
    np.testing.assert_array_equal(a.tiers, b.tiers)


def test_loads_simulated_recording(tiny_paths):
    rec = load_recording(tiny_paths["90001-1-1"], progress=False)
    assert rec.data_key == "90001-1-1"
    assert rec.images.shape == (2800, 1, 36, 64) and rec.images.dtype == np.uint8
    assert rec.responses.shape == (2800, 150) and rec.responses.dtype == np.float32
    assert rec.behavior.shape == (2800, 3) and rec.pupil_center.shape == (2800, 2)
    assert rec.tier_counts() == {"train": 720, "validation": 80, "test": 1000, "final_test": 1000}
    assert rec.cell_motor_coordinates.shape == (150, 3)
    assert rec.neuron_ids.tolist() == list(range(1, 151))
    assert set(rec.statistics) == {"images", "responses", "behavior", "pupil_center"}
    assert rec.statistics["responses"]["all"]["std"].shape == (150,)
    assert rec.statistics["images"]["all"]["mean"].shape == ()
    assert "frame_trial_ts" in rec.trials_meta


def test_folder_round_trip(small, tmp_path):
    path = write_recording(small, tmp_path / "static90002-1-1-GrayImageNet-abc", progress=False)
    back = load_recording(path, progress=False)
    assert_same(small, back)
    stats = back.statistics["responses"]["all"]
    np.testing.assert_allclose(stats["mean"], small.responses.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["std"], small.responses.std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["median"], np.median(small.responses, 0), rtol=1e-5)
    assert back.statistics["images"]["stimulus_frame"]["max"] == small.images.max()
    # Every per-trial file is a plain .npy the reference tools can np.load.
    first = np.load(path / "data" / "responses" / "0.npy")
    np.testing.assert_array_equal(first, small.responses[0])
    assert np.load(path / "data" / "images" / "3.npy").shape == (1, 36, 64)


def test_zip_round_trip_and_folder_holding_one_recording(small, tmp_path):
    archive = write_recording(small, tmp_path / "static90002-1-1-GrayImageNet-abc.zip", progress=False)
    with zipfile.ZipFile(archive) as zf:
        assert "static90002-1-1-GrayImageNet-abc/data/images/0.npy" in zf.namelist()
    assert_same(small, load_recording(archive, progress=False))
    # Extracted into a parent folder, as users unzip downloads: the parent is accepted too.
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "unzipped")
    assert_same(small, load_recording(tmp_path / "unzipped", progress=False))


def test_image_statistics_are_exact(small):
    stats = compute_statistics(small)["images"]["all"]
    pixels = small.images.astype(np.float64)
    assert stats["median"] == np.median(pixels)
    assert np.isclose(stats["mean"], pixels.mean()) and np.isclose(stats["std"], pixels.std(), rtol=1e-5)


def test_cache_is_memory_mapped_and_invalidated_when_a_file_changes(small, tmp_path):
    path = write_recording(small, tmp_path / "cache-probe", progress=False)
    first = load_recording(path, progress=False)
    assert isinstance(first.responses, np.memmap)
    entries = list((cache_root() / "recordings").glob("cache-probe-*"))
    assert len(entries) == 1 and (entries[0] / "entry.json").is_file()
    changed = small.responses[5] + 1.0
    np.save(path / "data" / "responses" / "5.npy", changed)
    second = load_recording(path, progress=False)
    np.testing.assert_array_equal(second.responses[5], changed)
    uncached = load_recording(path, cache_arrays=False, progress=False)
    assert not isinstance(uncached.responses, np.memmap)
    np.testing.assert_array_equal(uncached.responses, second.responses)


def test_reads_real_data_variants(small, tmp_path, caplog):
    """Float64 files, (H, W) images, pickled string metadata, config.json, extra meta files, no behaviour."""
    path = write_recording(
        small, tmp_path / "static26872-17-20-GrayImageNet-94c6ff995dac583098847cfecd43e7b6", progress=False
    )
    for i in range(small.n_trials):
        np.save(path / "data" / "responses" / f"{i}.npy", small.responses[i].astype(np.float64))
        np.save(path / "data" / "images" / f"{i}.npy", small.images[i, 0].astype(np.float64))
    timestamps = np.array(
        [f"Timestamp('2020-01-01 00:00:{i:02d}')" for i in range(small.n_trials)], dtype=object
    )
    np.save(path / "meta" / "trials" / "frame_trial_ts.npy", timestamps, allow_pickle=True)
    np.save(path / "meta" / "trials" / "album.npy", np.full(small.n_trials, "imagenet"))
    (path / "config.json").write_text(json.dumps({"written_by": "reference loader"}))
    for i in range(small.n_trials):
        (path / "data" / "behavior" / f"{i}.npy").unlink()
        (path / "data" / "pupil_center" / f"{i}.npy").unlink()
    (path / "data" / "behavior").rmdir()
    (path / "data" / "pupil_center").rmdir()
    with caplog.at_level(logging.WARNING):
        rec = load_recording(path, progress=False)
    assert rec.data_key == "26872-17-20"
    assert rec.images.dtype == np.float32 and rec.images.shape == small.images.shape
    np.testing.assert_array_equal(rec.images, small.images.astype(np.float32))
    np.testing.assert_array_equal(rec.responses, small.responses)
    assert rec.trials_meta["frame_trial_ts"][3] == "Timestamp('2020-01-01 00:00:03')"
    assert rec.trials_meta["album"][0] == "imagenet"
    assert not rec.has_behavior and rec.behavior.shape == (small.n_trials, 3)
    assert "no data/behavior/" in caplog.text


def test_144x256_images_round_trip(small, tmp_path):
    big = np.repeat(np.repeat(small.images, 4, axis=2), 4, axis=3)  # (n, 1, 144, 256)
    rec = Recording(**{**{f: getattr(small, f) for f in small.__dataclass_fields__}, "images": big})
    back = load_recording(write_recording(rec, tmp_path / "big", progress=False), progress=False)
    assert back.image_shape == (144, 256)
    np.testing.assert_array_equal(back.images, big)


def test_write_refuses_to_overwrite_unless_asked(small, tmp_path):
    path = write_recording(small, tmp_path / "rec", progress=False)
    with pytest.raises(FormatError, match="already exists"):
        write_recording(small, path, progress=False)
    write_recording(small.subset(np.arange(5)), path, overwrite=True, progress=False)
    assert load_recording(path, progress=False).n_trials == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_recording_checks_its_fields(small):
    fields = {f: getattr(small, f) for f in small.__dataclass_fields__}
    with pytest.raises(InvalidInput, match="behavior: shape"):
        Recording(**{**fields, "behavior": small.behavior[:, :2]})
    with pytest.raises(InvalidInput, match="tiers: unknown tier names"):
        Recording(**{**fields, "tiers": np.full(small.n_trials, "holdout")})
    with pytest.raises(InvalidInput, match="cell_motor_coordinates"):
        Recording(**{**fields, "cell_motor_coordinates": small.cell_motor_coordinates[:-1]})
    with pytest.raises(InvalidInput, match="tier"):
        small.tier_indices("testing")


def test_data_key_from_folder_name():
    assert (
        data_key_from_name("static26872-17-20-GrayImageNet-94c6ff995dac583098847cfecd43e7b6") == "26872-17-20"
    )
    assert data_key_from_name("static21067-10-18-GrayImageNet") == "21067-10-18"
    assert data_key_from_name("my-recording") is None
