"""Every way a recording on disk can be wrong gets a FormatError naming the file and what was expected."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from twin.data import Recording, load_recording, write_recording
from twin.errors import FormatError


@pytest.fixture(scope="module")
def pristine(tiny_paths, tmp_path_factory) -> Path:
    rec = load_recording(tiny_paths["90002-1-1"], progress=False)
    idx = np.concatenate([rec.tier_indices("train")[:12], rec.tier_indices("test")[:20]])
    return write_recording(
        rec.subset(idx), tmp_path_factory.mktemp("valid") / "static90002-1-1-X", progress=False
    )


@pytest.fixture()
def broken(pristine, tmp_path) -> Path:
    copy = tmp_path / pristine.name
    shutil.copytree(pristine, copy)
    return copy


def _tiers(path: Path) -> np.ndarray:
    return np.load(path / "meta" / "trials" / "tiers.npy")


def _mutations() -> dict[str, tuple[Callable[[Path], None], str]]:
    def save(rel: str, value) -> Callable[[Path], None]:
        return lambda p: np.save(p / rel, value)

    def remove(rel: str) -> Callable[[Path], None]:
        def do(p: Path) -> None:
            target = p / rel
            shutil.rmtree(target) if target.is_dir() else target.unlink()

        return do

    def retier(p: Path) -> None:
        tiers = _tiers(p).astype("<U12")
        tiers[3] = "holdout"
        np.save(p / "meta" / "trials" / "tiers.npy", tiers)

    def rename(p: Path) -> None:
        (p / "data" / "responses" / "7.npy").rename(p / "data" / "responses" / "seven.npy")

    def negative(p: Path) -> None:
        r = np.load(p / "data" / "responses" / "4.npy")
        r[2] = -0.5
        np.save(p / "data" / "responses" / "4.npy", r)

    def nan(p: Path) -> None:
        r = np.load(p / "data" / "responses" / "9.npy")
        r[0] = np.nan
        np.save(p / "data" / "responses" / "9.npy", r)

    def inf_image(p: Path) -> None:
        img = np.load(p / "data" / "images" / "2.npy").astype(np.float32)
        img[0, 0, 0] = np.inf
        for i in range(len(_tiers(p))):  # all files float32, so the dtype check passes and inf is found
            np.save(
                p / "data" / "images" / f"{i}.npy",
                img if i == 2 else np.load(p / "data" / "images" / f"{i}.npy").astype(np.float32),
            )

    def garbage(p: Path) -> None:
        (p / "data" / "behavior" / "3.npy").write_bytes(b"not an npy file")

    return {
        "missing responses folder": (remove("data/responses"), r"data/responses: missing folder"),
        "missing tiers": (remove("meta/trials/tiers.npy"), r"meta/trials/tiers.npy: missing file"),
        "missing image ids": (remove("meta/trials/frame_image_id.npy"), r"frame_image_id.npy: missing file"),
        "one trial file fewer": (
            remove("data/responses/31.npy"),
            r"data/responses: 31 trial files, but meta/trials/tiers.npy lists 32",
        ),
        "extra trial file": (
            save("data/images/32.npy", np.zeros((1, 36, 64), np.uint8)),
            r"data/images: 33 trial files, but meta/trials/tiers.npy lists 32",
        ),
        "bad file name": (rename, r"unexpected file names \['seven.npy'\]"),
        "wrong response width": (
            save("data/responses/6.npy", np.zeros(149, np.float32)),
            r"responses/6.npy: shape \(149,\) dtype float32; expected shape \(150,\)",
        ),
        "wrong behaviour shape": (
            save("data/behavior/8.npy", np.zeros(4, np.float32)),
            r"behavior/8.npy: shape \(4,\).*expected shape \(3,\)",
        ),
        "wrong image shape": (
            lambda p: [
                np.save(p / "data" / "images" / f"{i}.npy", np.zeros((3, 36, 64), np.uint8))
                for i in range(32)
            ],
            r"images/0.npy: shape \(3, 36, 64\); expected \(1, H, W\)",
        ),
        "NaN response": (nan, r"responses/9.npy: contains NaN or inf"),
        "inf pixel": (inf_image, r"images/2.npy: contains NaN or inf"),
        "negative response": (negative, r"responses/4.npy: negative response -0.5; expected responses >= 0"),
        "unknown tier": (retier, r"tiers.npy: unknown tier names \['holdout'\]"),
        "short trial metadata": (
            save("meta/trials/trial_idx.npy", np.arange(30)),
            r"trial_idx.npy: shape \(30,\); expected 32 rows",
        ),
        "unit ids disagree": (
            save("meta/neurons/unit_ids.npy", np.arange(149)),
            r"unit_ids.npy: 149 neurons; expected 150 to match the width of data/responses",
        ),
        "coordinates wrong shape": (
            save("meta/neurons/cell_motor_coordinates.npy", np.zeros((150, 2))),
            r"cell_motor_coordinates.npy: shape \(150, 2\); expected \(150, 3\)",
        ),
        "corrupt file": (garbage, r"behavior/3.npy: not a valid .npy file"),
        "corrupt tiers": (
            lambda p: (p / "meta" / "trials" / "tiers.npy").write_bytes(b"\x93NUMPY garbage"),
            r"tiers.npy: not a valid .npy file",
        ),
        "non-integer image ids": (
            save("meta/trials/frame_image_id.npy", np.linspace(0, 1, 32)),
            r"frame_image_id.npy: non-integer values; expected integer ids",
        ),
    }


MUTATIONS = _mutations()


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_broken_recording_names_the_file_and_the_expectation(broken, case):
    mutate, message = MUTATIONS[case]
    mutate(broken)
    with pytest.raises(FormatError, match=message) as info:
        load_recording(broken, progress=False)
    assert str(broken) in str(info.value)


def test_missing_path_and_not_a_recording(tmp_path):
    with pytest.raises(FormatError, match="no such file or folder"):
        load_recording(tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match=r"not a recording folder \(missing data/, meta/\)"):
        load_recording(tmp_path / "empty", progress=False)
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(FormatError, match=r"expected a recording folder or a \.zip"):
        load_recording(tmp_path / "file.txt", progress=False)


def test_zip_without_a_recording(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.zip", "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(FormatError, match="no recording inside"):
        load_recording(tmp_path / "x.zip", progress=False)


def test_a_valid_load_after_a_failed_one_uses_fresh_data(broken):
    """A failed cache build leaves nothing behind; fixing the file makes the next load succeed."""
    good = np.load(broken / "data" / "responses" / "4.npy")
    MUTATIONS["negative response"][0](broken)
    with pytest.raises(FormatError):
        load_recording(broken, progress=False)
    np.save(broken / "data" / "responses" / "4.npy", good)
    rec = load_recording(broken, progress=False)
    assert isinstance(rec, Recording) and rec.responses.min() >= 0


def test_cli_validate_reports_one_line_and_exit_2(broken, pristine):
    ok = subprocess.run(
        [sys.executable, "-m", "twin.cli", "data", "validate", str(pristine)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok  90002-1-1: 32 trials")
    MUTATIONS["negative response"][0](broken)
    bad = subprocess.run(
        [sys.executable, "-m", "twin.cli", "data", "validate", str(broken)], capture_output=True, text=True
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "responses/4.npy" in lines[0]
