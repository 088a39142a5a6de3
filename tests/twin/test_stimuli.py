"""Tests of the synthetic natural-image stimuli: shape, determinism, natural statistics, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from twin.data import stimuli
from twin.data.stimuli import natural_images, radial_amplitude_spectrum
from twin.errors import InvalidInput


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return natural_images(np.arange(100, 132))  # (32, 144, 256)


def _kurtosis(x: np.ndarray) -> float:
    x = x - x.mean()
    return float(np.mean(x**4) / np.mean(x**2) ** 2)


def test_public_surface():
    assert sorted(stimuli.__all__) == ["natural_images", "radial_amplitude_spectrum"]


@pytest.mark.parametrize(("height", "width"), [(144, 256), (36, 64), (16, 16), (17, 31)])
def test_dtype_and_shape(height, width):
    x = natural_images([0, 1, 2], height=height, width=width)
    assert x.dtype == np.uint8
    assert x.shape == (3, height, width)
    assert x.std() > 10  # not blank


def test_empty_id_list():
    assert natural_images([], height=36, width=64).shape == (0, 36, 64)


def test_same_ids_and_seed_give_identical_images():
    np.testing.assert_array_equal(natural_images([3, 4], seed=7), natural_images(np.array([3, 4]), seed=7))


def test_image_depends_only_on_seed_and_id():
    batch = natural_images([5, 17, 3, 900], seed=2)
    reordered = natural_images([900, 3, 17], seed=2)
    np.testing.assert_array_equal(natural_images([17], seed=2)[0], batch[1])
    np.testing.assert_array_equal(reordered[2], batch[1])
    np.testing.assert_array_equal(reordered[::-1], batch[1:])
    np.testing.assert_array_equal(natural_images(np.array([17.0]), seed=2)[0], batch[1])  # whole floats


def test_seed_and_id_change_images():
    a, b = natural_images([17, 18], seed=0)
    assert np.mean(a != natural_images([17], seed=1)[0]) > 0.5
    assert np.mean(a != b) > 0.5


def test_amplitude_spectrum_is_close_to_one_over_f(images):
    frequencies, amplitude = radial_amplitude_spectrum(images)
    mid = (frequencies >= 0.02) & (frequencies <= 0.2)  # ~3 to ~29 cycles per image height
    slope = np.polyfit(np.log(frequencies[mid]), np.log(amplitude[mid]), 1)[0]
    assert -1.4 <= slope <= -0.8


def test_pixel_statistics_match_grayscale_photos(images):
    assert 110 <= images.mean() <= 130
    assert 45 <= images.std() <= 70
    assert np.median(images.std(axis=(1, 2))) >= 40  # each image has contrast, not just the batch
    assert np.mean((images == 0) | (images == 255)) < 0.02


def test_occlusion_edges_are_sharp(images):
    # Sharp edges make neighbour differences heavy-tailed; the same spectrum with random phases does not.
    rng = np.random.default_rng(0)
    spectrum = np.fft.rfft2(images.astype(np.float64))
    phases = np.exp(2j * np.pi * rng.random(spectrum.shape))
    phases[:, 0, 0] = 1.0
    scrambled = np.fft.irfft2(np.abs(spectrum) * phases, s=images.shape[1:])
    edges = _kurtosis(np.diff(images.astype(np.float64), axis=2))
    assert edges > 6
    assert edges > 2 * _kurtosis(np.diff(scrambled, axis=2))


def test_radial_amplitude_spectrum_finds_a_grating():
    y, x = np.mgrid[:64, :64]
    frequencies, amplitude = radial_amplitude_spectrum(np.sin(2 * np.pi * 8 * x / 64) + 0 * y)
    assert frequencies[np.argmax(amplitude)] == pytest.approx(8 / 64)
    assert frequencies.min() > 0 and frequencies.max() <= 0.5


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"image_ids": [[1, 2]]}, "image_ids"),
        ({"image_ids": 3}, "image_ids"),
        ({"image_ids": [[1], [1, 2]]}, "image_ids"),
        ({"image_ids": ["a", "b"]}, "image_ids"),
        ({"image_ids": [True, False]}, "image_ids"),
        ({"image_ids": [1.5]}, "image_ids"),
        ({"image_ids": [float("nan")]}, "image_ids"),
        ({"image_ids": [-1]}, "image_ids"),
        ({"image_ids": [0], "height": 15}, "height"),
        ({"image_ids": [0], "height": 32.0}, "height"),
        ({"image_ids": [0], "height": True}, "height"),
        ({"image_ids": [0], "width": 8}, "width"),
        ({"image_ids": [0], "width": "64"}, "width"),
        ({"image_ids": [0], "seed": -1}, "seed"),
        ({"image_ids": [0], "seed": 1.0}, "seed"),
        ({"image_ids": [0], "seed": None}, "seed"),
    ],
)
def test_invalid_arguments_raise(kwargs, argument):
    with pytest.raises(InvalidInput, match=argument):
        natural_images(**kwargs)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(8), np.zeros((0, 8, 8)), np.zeros((2, 1, 8)), np.zeros((4, 4), bool), np.full((4, 4), "a")],
)
def test_radial_amplitude_spectrum_rejects_bad_images(bad):
    with pytest.raises(InvalidInput, match="images"):
        radial_amplitude_spectrum(bad)
