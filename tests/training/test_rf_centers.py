"""Receptive-field centres estimated from training trials, and the readout positions that start there.

Checked against the simulated neurons' true centres (the tiny preset's ground truth), against the same
responses shuffled over trials, and through the core's geometry (where its features sit on the image).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from training.models import CoreConfig, ModelConfig, ReadoutConfig, RecordingShape, build, get_config
from training.models.core import Core
from training.models.readout import GaussianReadout
from training.rf_centers import estimate_centers
from training.run import _shapes, load_tensors
from twin.errors import InvalidInput


@pytest.fixture(scope="module")
def recording(tiny_sim, tiny_paths):
    """The image-only tiny recording at the model's resolution, its training trials, and the truth."""
    key = "90001-1-1"
    data = load_tensors([tiny_paths[key]], resize="area")[key]
    train = data.indices("train")
    truth = np.load(tiny_sim / "ground_truth" / key / "population.npz")["center"]  # (N, 2) x, y
    return data, train, truth


def test_centres_are_found_where_the_simulated_receptive_fields_are(recording):
    data, train, truth = recording
    centers, clarity = estimate_centers(data.images[train], data.responses[train])
    assert centers.shape == (data.n_neurons, 2) and clarity.shape == (data.n_neurons,)
    error = np.linalg.norm(centers - truth, axis=1)
    # 720 trials of 150 neurons (measured: median 1.5 px, 59% within 2 px; the grid is 64 x 36)
    assert np.median(error) < 2.0 and np.mean(error < 2) > 0.5
    clear = clarity > 0.9
    assert clear.mean() > 0.4 and np.median(error[clear]) < np.median(error[~clear])
    # The same responses shuffled over trials: no receptive field to find, clarity about uniform.
    order = np.random.default_rng(1).permutation(len(train))
    _, shuffled = estimate_centers(data.images[train], data.responses[train][order])
    assert np.median(clarity) > 0.9 and 0.3 < np.median(shuffled) < 0.7
    again = estimate_centers(data.images[train], data.responses[train])
    assert np.array_equal(again[0], centers) and np.array_equal(again[1], clarity)  # deterministic


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected"):
        estimate_centers(np.zeros((5, 8, 8)), np.zeros((4, 3)))


@pytest.mark.parametrize(
    "core",
    [
        CoreConfig(kind="cnn", layers=1, input_kernel=9),
        CoreConfig(kind="cnn", layers=1, input_kernel=5, pad_input=True),
        CoreConfig(kind="cnn", layers=1, input_kernel=4, input_stride=4),
    ],
)
def test_feature_position_is_where_the_first_conv_sees_the_pixel(core):
    """A first conv whose kernel is a centred impulse: a bright pixel lights the feature at the position
    feature_position gives for it (unpadded, padded, strided)."""
    net = Core(core)
    conv = net.input_layer[0]
    k = core.input_kernel
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, (k - 1) // 2, (k - 1) // 2] = 1.0
    x, y = 25, 13  # a pixel that the strided conv's impulse (at kernel index 1) lands on: 4 j + 1
    image = torch.zeros(1, 1, 36, 64)
    image[0, 0, y, x] = 1.0
    features = conv(image)[0, 0]  # (H', W')
    row, col = np.unravel_index(int(features.argmax()), features.shape)
    h, w = features.shape
    expected = [col / (w - 1) * 2 - 1, row / (h - 1) * 2 - 1]
    position = net.feature_position(np.array([x, y], dtype=np.float32), (36, 64))
    np.testing.assert_allclose(net.pixel_position(position, (36, 64)), [x, y], atol=1e-4)  # its inverse
    if k % 2:
        np.testing.assert_allclose(position, expected, atol=1e-6)
    else:  # the impulse sits at kernel index k/2 - 1: half a pixel (1/(2 stride) features) before centre
        np.testing.assert_allclose(position, expected, atol=1 / (w - 1) + 1e-6)


def _cortex_map(n: int = 200):
    """Cortical coordinates and positions that follow them: a rotated, mirrored linear map."""
    rng = np.random.default_rng(0)
    coordinates = rng.uniform(-300, 300, (n, 3)).astype(np.float32)
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    grid = coordinates[:, :2] / 300
    positions = (grid @ rotation.T @ np.diag([-0.6, 0.5]) + [0.1, -0.05]).astype(np.float32)
    return coordinates, positions


def test_positions_fit_the_cortical_map_robustly():
    torch.manual_seed(0)
    coordinates, positions = _cortex_map()
    readout = GaussianReadout((4, 10, 20), coordinates, ReadoutConfig())
    before = readout.mu().detach().numpy()
    assert np.abs(before - positions).max() > 0.2  # the random start is elsewhere
    clarity = np.ones(len(positions), np.float32)
    noisy = positions.copy()
    noisy[:20] = np.random.default_rng(1).uniform(-0.9, 0.9, (20, 2))  # 10% wildly wrong estimates...
    clarity[20:30] = 0.0  # ...and some found unclearly (their estimates exact, but not trusted)
    readout.initialize_positions(noisy, clarity)
    mu = readout.mu().detach().numpy()
    # The map is smooth over the cortex: the wrong ones are carried by their neighbours.
    error = np.abs(mu - positions).max(1)
    assert np.median(error) < 0.01 and error.max() < 0.1  # (before: > 0.2)
    assert all(p.grad is None for p in readout.parameters())


def test_position_offsets_start_at_each_neurons_clarity_times_its_residual():
    torch.manual_seed(0)
    coordinates, positions = _cortex_map()
    readout = GaussianReadout((4, 10, 20), coordinates, ReadoutConfig(offset_weight=1.0))
    clarity = np.ones(len(positions), np.float32)
    estimates = positions.copy()
    estimates[:20] += np.random.default_rng(1).uniform(-0.3, 0.3, (20, 2))  # off the smooth map...
    clarity[10:20] = 0.0  # ...half of them not trusted
    readout.initialize_positions(estimates, clarity)
    mapped = readout.mu_transform(readout.source_grid).detach().numpy()
    assert np.abs(mapped - positions).max(1)[20:].mean() < 0.02  # the map fitted as without offsets
    offset = readout.offset.detach().numpy()
    np.testing.assert_allclose(offset, clarity[:, None] * (estimates - mapped), atol=1e-6)
    mu = readout.mu().detach().numpy()
    np.testing.assert_allclose(mu[:10], estimates[:10], atol=1e-5)  # trusted: their own estimate
    np.testing.assert_allclose(mu[10:20], mapped[10:20], atol=1e-6)  # untrusted: the map's
    assert all(p.grad is None for p in readout.parameters())


def test_positions_without_coordinates_move_by_their_clarity():
    readout = GaussianReadout((4, 10, 20), None, ReadoutConfig(use_coordinates=False), n_neurons=3)
    positions = np.array([[0.5, 0.5], [-0.5, 0.0], [2.0, -3.0]], np.float32)
    readout.initialize_positions(positions, np.array([1.0, 1.0, 0.0], np.float32))
    mu = readout.mu().detach().numpy()
    np.testing.assert_allclose(mu[:2], positions[:2])
    np.testing.assert_allclose(mu[2], positions[:2].mean(0))  # not trusted: the trusted ones' mean
    with pytest.raises(InvalidInput, match="positions, clarity"):
        readout.initialize_positions(positions[:2], np.ones(2, np.float32))
    with pytest.raises(InvalidInput, match="NaN"):
        readout.initialize_positions(np.full((3, 2), np.nan, np.float32), np.ones(3, np.float32))


def test_position_init_is_a_validated_readout_field():
    with pytest.raises(InvalidInput, match="position_init"):
        ReadoutConfig(position_init="truth")
    for name in ("twin", "twin_behavior"):
        assert get_config(name).readout.position_init == "data"
    for name in ("ln", "cnn", "cnn_behavior"):
        assert get_config(name).readout.position_init == "random"  # the baselines start as the reference's
    stored = get_config("twin").to_dict()
    del stored["readout"]["position_init"]  # a config stored before the field: it trained from random
    assert ModelConfig.from_dict(stored).readout.position_init == "random"
    with pytest.raises(InvalidInput, match="rf_centers, rf_clarity"):
        RecordingShape(n_neurons=2, rf_centers=np.zeros((2, 2)))
    with pytest.raises(InvalidInput, match="rf_centers: shape"):
        RecordingShape(n_neurons=2, rf_centers=np.zeros((3, 2)), rf_clarity=np.zeros(3))


def test_a_twin_built_for_training_starts_its_readout_at_the_estimated_centres(recording):
    data, _, truth = recording
    config = get_config("twin")
    config = replace(config, core=replace(config.core, channels=4, layers=2))
    shapes = _shapes({"90001-1-1": data}, config)
    torch.manual_seed(0)
    net = build(config, shapes)
    mu = net.readouts["90001-1-1"].mu().detach().numpy()  # feature-map coordinates
    pixels = net.core.pixel_position(mu, config.image_shape)
    # The map of cortical coordinates through the estimates: retinotopy, without the neurons' own
    # scatter around it (1.5 px per axis in the simulation), so near the truth for most neurons...
    error = np.linalg.norm(pixels - truth, axis=1)
    print("start error median / 90th percentile (px):", np.median(error), np.percentile(error, 90))
    assert np.median(error) < 2.5 and np.percentile(error, 90) < 5.0
    # ... and far nearer than the random start.
    random = build(replace(config, readout=replace(config.readout, position_init="random")), shapes)
    off = random.core.pixel_position(random.readouts["90001-1-1"].mu().detach().numpy(), config.image_shape)
    assert np.median(np.linalg.norm(off - truth, axis=1)) > 5.0


def test_fine_tuning_loads_pretrained_readouts_and_estimates_the_others(tiny_paths, tmp_path):
    import json

    from training.run import train_run
    from training.trainer import BEST, TrainConfig

    config = get_config("twin")
    config = replace(config, core=replace(config.core, channels=4, layers=2))
    train = TrainConfig(max_epochs=1, batch_size=64, seed=0)
    paths = [tiny_paths["90001-1-1"], tiny_paths["90002-1-1"]]
    pretrained = tmp_path / "pretrained"
    train_run(paths[:1], config, pretrained, config=train, progress=False)

    def started(run):
        return json.loads((run / "members" / "member-0" / "training.json").read_text())["readout_start"]

    assert started(pretrained) == {"90001-1-1": "estimated"}
    train_run(paths, config, tmp_path / "fine", config=train, progress=False, init_from=pretrained)
    assert started(tmp_path / "fine") == {"90001-1-1": "pretrained", "90002-1-1": "estimated"}

    # The same data key with other neurons in the pretrained weights: its readout cannot be loaded, so it
    # starts from the estimates after all.
    best = pretrained / "members" / "member-0" / BEST
    saved = torch.load(best, weights_only=False)
    for name, tensor in saved["model"].items():
        if name.startswith("readouts.90001-1-1."):
            saved["model"][name] = torch.zeros((*tensor.shape, 2))
    torch.save(saved, best)
    train_run(paths[:1], config, tmp_path / "other", config=train, progress=False, init_from=pretrained)
    assert started(tmp_path / "other") == {"90001-1-1": "estimated"}
    start = json.loads((tmp_path / "other" / "members" / "member-0" / "training.json").read_text())["start"]
    assert any(name.startswith("readouts.90001-1-1.") for name in start["fresh"])
