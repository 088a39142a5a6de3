"""Model components on tiny shapes: every registered model, the eval readout's gather path, regularizers."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.models import (
    Core,
    CoreConfig,
    GaussianReadout,
    ModelConfig,
    ReadoutConfig,
    RecordingShape,
    Shifter,
    Twin,
    available,
    build,
    get_config,
    register,
)
from training.models import registry as registry_module
from training.models.core import laplace_l2norm
from training.models.readout import normalize_coordinates
from twin.errors import InvalidInput, ModelNotFound

B, H, W = 3, 36, 64
KEYS = {"26872-17-20": 7, "27204-5-13": 5}


def recordings(seed: int = 0) -> dict[str, RecordingShape]:
    rng = np.random.default_rng(seed)
    return {
        key: RecordingShape(
            n_neurons=n,
            coordinates=rng.normal(0, 200, size=(n, 3)).astype(np.float32),
            mean_response=rng.uniform(0.2, 2.0, size=n).astype(np.float32),
        )
        for key, n in KEYS.items()
    }


def inputs(batch: int = B) -> dict[str, torch.Tensor]:
    return {
        "images": torch.randn(batch, 1, H, W),
        "behavior": torch.rand(batch, 3),
        "pupil_center": torch.randn(batch, 2),
    }


def small(name: str) -> ModelConfig:
    """A registered config with a narrow core, so the tests stay fast."""
    config = get_config(name)
    return replace(config, core=replace(config.core, channels=8))


def run(model: Twin, key: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(x["images"], key, behavior=x["behavior"], pupil_center=x["pupil_center"])


# --- every registered model ------------------------------------------------------------------------


def test_public_names_exist():
    import training.models

    assert all(hasattr(training.models, name) for name in training.models.__all__)


def test_registry_has_the_baselines():
    assert {"ln", "cnn", "cnn_behavior", "twin", "twin_behavior"} <= set(available())
    assert get_config("ln").core.kind == "linear" and get_config("ln").core.layers == 3
    assert get_config("cnn").core.layers == 4 and not get_config("cnn").behavior_channels
    plus = get_config("cnn_behavior")
    assert plus.behavior_channels and plus.shifter and plus.core.in_channels == 4


def test_with_inputs_changes_the_input_channels_and_the_core_follows():
    twin = get_config("twin_behavior")  # image, centred copy, gradients, behaviour: 7 channels
    assert twin.core.in_channels == 7
    plain = twin.with_inputs(input_gradients=False, behavior_channels=False)
    assert plain.core.in_channels == 2 and plain.input_centered and not plain.behavior_channels
    assert plain.core == replace(twin.core, in_channels=2) and plain.with_inputs() == plain
    with pytest.raises(InvalidInput, match=r"core.in_channels: 7; expected 5"):
        replace(twin, input_gradients=False)  # what with_inputs saves a caller from
    with pytest.raises(InvalidInput, match=r"input_gradients: 0; expected True or False"):
        twin.with_inputs(input_gradients=0)
    with pytest.raises(InvalidInput, match=r"shifter: not an input channel field; expected one of"):
        twin.with_inputs(shifter=False)


@pytest.mark.parametrize("name", available())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = build(small(name), recordings())
    x = inputs()
    for key, n in KEYS.items():
        out = run(model, key, x)
        assert out.shape == (B, n)
        assert torch.all(out > 0)  # ELU + 1
        model.zero_grad()
        (out.sum() + model.regularizer(key)).backward()
        trained = [model.core, model.readouts[key]] + ([model.shifters[key]] if model.shifters else [])
        for part in trained:
            for pname, p in part.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), (key, pname)
        other = next(k for k in KEYS if k != key)
        assert all(p.grad is None for p in model.readouts[other].parameters())
    model.eval()
    assert run(model, "27204-5-13", x).shape == (B, KEYS["27204-5-13"])


@pytest.mark.parametrize("name", available())
def test_state_dict_rebuilds_the_same_model(name):
    torch.manual_seed(0)
    model = build(small(name), recordings()).eval()
    torch.manual_seed(1)
    again = build(ModelConfig.from_dict(model.config.to_dict()), recordings(seed=1)).eval()
    again.load_state_dict(model.state_dict())
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(run(again, "26872-17-20", x), run(model, "26872-17-20", x))


@pytest.mark.parametrize("name", available())
def test_eval_model_exports_without_grid_sample(name):
    torch.manual_seed(0)
    model = build(small(name), recordings()).eval()

    class OneKey(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images, behavior, pupil_center):
            return self.model(images, "27204-5-13", behavior=behavior, pupil_center=pupil_center)

    x = inputs()
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        OneKey(), (x["images"], x["behavior"], x["pupil_center"]), dynamic_shapes=({0: batch},) * 3
    )
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("grid_sampler" in op for op in ops)
    y = inputs(batch=5)
    with torch.no_grad():
        torch.testing.assert_close(
            program.module()(y["images"], y["behavior"], y["pupil_center"]), run(model, "27204-5-13", y)
        )


# --- core ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cnn", "linear"])
def test_core_output_size(kind):
    core = Core(CoreConfig(kind=kind, channels=8))
    features = core(torch.randn(2, 1, H, W))
    assert features.shape == (2, 8, 28, 56)  # 9x9 unpadded first conv; 'same' hidden convs
    assert core.output_shape(H, W) == (8, 28, 56)
    assert Core(CoreConfig(channels=8, pad_input=True)).output_shape(H, W) == (8, H, W)
    strided = Core(CoreConfig(channels=8, input_kernel=4, input_stride=2))
    assert strided(torch.randn(1, 1, H, W)).shape[1:] == strided.output_shape(H, W) == (8, 17, 31)


def test_depth_separable_layer_is_pointwise_depthwise_pointwise():
    core = Core(CoreConfig(channels=8, layers=2))
    conv = core.hidden_layers[0][0]
    assert [m.kernel_size for m in conv] == [(1, 1), (7, 7), (1, 1)]
    assert conv.spatial_conv.groups == 8


@pytest.mark.parametrize("kind", ["linear", "cnn"])
def test_only_the_linear_core_is_affine_at_eval(kind):
    torch.manual_seed(0)
    core = Core(CoreConfig(kind=kind, channels=8, layers=3))
    core(torch.randn(16, 1, H, W))  # training step: move the batch-norm statistics off their defaults
    core.eval()
    a, b, zero = torch.randn(2, 1, H, W), torch.randn(2, 1, H, W), torch.zeros(2, 1, H, W)
    with torch.no_grad():
        # An affine map f satisfies f(a + b) + f(0) = f(a) + f(b).
        affine = torch.allclose(core(a + b) + core(zero), core(a) + core(b), atol=1e-4, rtol=1e-4)
    assert affine == (kind == "linear")


def test_residual_and_dropout_variants_run():
    torch.manual_seed(0)
    core = Core(CoreConfig(channels=8, residual=True, dropout=0.5))
    x = torch.randn(2, 1, H, W)
    assert not torch.equal(core(x), core(x))  # dropout while training
    core.eval()
    torch.testing.assert_close(core(x), core(x))


def test_laplace_regularizer():
    torch.manual_seed(0)
    core = Core(CoreConfig(channels=4))
    reg = core.regularizer()
    assert reg.ndim == 0 and reg > 0
    weight = core.input_layer[0].weight
    torch.testing.assert_close(reg, 6.3831 * laplace_l2norm(weight))
    # Scale-invariant (normalized by the weights' energy).
    torch.testing.assert_close(laplace_l2norm(3 * weight), laplace_l2norm(weight))
    # Zero padding: a constant 9x9 kernel is penalized on its rim only: 28 edge cells (4 - 3 = 1) and
    # 4 corners (4 - 2 = 2) give 28 + 16 = 44 against 81 cells of energy 1.
    torch.testing.assert_close(laplace_l2norm(torch.ones(2, 3, 9, 9)), torch.tensor(44 / 81))
    # Smooth kernels cost far less than white noise.
    grid = torch.linspace(-1, 1, 9)
    smooth = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / 0.3)[None, None]
    assert laplace_l2norm(smooth) < laplace_l2norm(torch.randn(1, 1, 9, 9)) / 5


# --- readout ---------------------------------------------------------------------------------------


def reference_readout(readout: GaussianReadout, features: torch.Tensor, shift=None) -> torch.Tensor:
    """What FullGaussian2d computes at eval: grid_sample at clamp(mu) (+ shift), channel sum, bias."""
    positions = readout.mu().detach()[None].expand(features.shape[0], -1, -1)
    if shift is not None:
        positions = positions + shift[:, None, :]
    sampled = F.grid_sample(features, positions[:, :, None, :], align_corners=True)[..., 0]  # (B, C, N)
    return torch.einsum("bcn,nc->bn", sampled, readout.features) + readout.bias


@pytest.mark.parametrize("with_shift", [False, True])
def test_eval_gather_matches_grid_sample(with_shift):
    torch.manual_seed(0)
    n = 40
    readout = GaussianReadout((6, 5, 7), None, ReadoutConfig(), n_neurons=n)
    with torch.no_grad():
        mu = torch.rand(n, 2) * 2 - 1
        # The border: corners, edges, exact pixel centres, and positions beyond [-1, 1] (clamped).
        mu[:12] = torch.tensor(
            [
                [-1, -1],
                [1, 1],
                [-1, 1],
                [1, -1],
                [0, 1],
                [1, 0],
                [-1, 0],
                [0, -1],
                [0.5, 0.5],
                [1.5, 0.2],
                [-3.0, -1.2],
                [0.999999, -0.999999],
            ]
        )
        readout._mu.copy_(mu)
        readout.features.normal_()
        readout.bias.normal_()
    readout.eval()
    features = torch.randn(4, 6, 5, 7)
    # Shifts large enough to push positions off the map, where grid_sample reads zeros.
    shift = torch.tensor([[0.0, 0.0], [0.3, -0.2], [-1.5, 0.7], [2.5, 2.5]]) if with_shift else None
    with torch.no_grad():
        torch.testing.assert_close(
            readout(features, shift), reference_readout(readout, features, shift), atol=1e-5, rtol=1e-5
        )


def test_eval_gather_matches_grid_sample_with_predicted_positions():
    torch.manual_seed(0)
    coordinates = np.random.default_rng(0).normal(size=(9, 3))
    readout = GaussianReadout((4, 28, 56), coordinates, ReadoutConfig()).eval()
    features = torch.randn(2, 4, 28, 56)
    with torch.no_grad():
        torch.testing.assert_close(
            readout(features), reference_readout(readout, features), atol=1e-5, rtol=1e-5
        )


def test_position_offsets_leave_the_map_and_are_penalized():
    torch.manual_seed(0)
    coordinates = np.random.default_rng(0).normal(size=(30, 3))
    plain = GaussianReadout((4, 28, 56), coordinates, ReadoutConfig(l1_weight=0.5))
    readout = GaussianReadout((4, 28, 56), coordinates, ReadoutConfig(l1_weight=0.5, offset_weight=2.0))
    readout.load_state_dict(plain.state_dict() | {"offset": torch.zeros(30, 2)})
    torch.testing.assert_close(readout.mu(), plain.mu())  # they start on the map
    torch.testing.assert_close(readout.regularizer(), plain.regularizer())
    with torch.no_grad():
        readout.offset.uniform_(-0.5, 0.5)
        readout.offset[0] = torch.tensor([3.0, -3.0])  # beyond the map's edge: clamped
        readout.features.normal_()
        plain.features.copy_(readout.features)
    expected = (plain.mu() + readout.offset).clamp(-1, 1)
    torch.testing.assert_close(readout.mu(), expected)
    assert readout.mu()[0].tolist() == [1.0, -1.0]
    torch.testing.assert_close(
        readout.regularizer(), plain.regularizer() + 2.0 * readout.offset.square().sum()
    )
    features = torch.randn(3, 4, 28, 56)
    with torch.no_grad():  # the eval path (gathers) reads where grid_sample reads
        torch.testing.assert_close(
            readout.eval()(features), reference_readout(readout, features), atol=1e-5, rtol=1e-5
        )
    readout.train()
    (readout(features).sum() + readout.regularizer()).backward()
    assert readout.offset.grad[1:].abs().sum() > 0  # learned in training
    assert readout.mu_transform[0].weight.grad.abs().sum() > 0  # and the map with them
    assert "offset" not in dict(plain.named_parameters())  # without offset_weight: the map alone


def test_edge_fraction_counts_the_neurons_within_half_a_feature_pixel_of_the_border():
    """(C, 36, 64) features: half a pixel is 1 / 63 of the half-width in x and 1 / 35 in y, so a neuron
    at |x| >= 0.9841 or |y| >= 0.9714 is at the edge, one at 0.98 in x or 0.97 in y is not."""
    free = replace(ReadoutConfig(), use_coordinates=False)
    readout = GaussianReadout((4, 36, 64), None, free, n_neurons=8)
    at = [
        (0.0, 0.0),
        (1.0, 0.0),
        (0.0, -0.975),
        (0.5, 0.5),
        (0.98, 0.0),
        (0.0, 0.97),
        (-0.99, 0.3),
        (5.0, 5.0),
    ]
    with torch.no_grad():
        readout._mu.copy_(torch.tensor(at))
    assert readout.edge_fraction() == pytest.approx(4 / 8)  # (1, 0), (0, -0.975), (-0.99, .), clamped (5, 5)
    # one pixel wide or high: only the other axis has an edge
    assert GaussianReadout((4, 1, 64), None, free, n_neurons=8).edge_fraction() == 0.0
    # with the map: its start (tanh of a small random MLP) is inside; offsets past the border clamp there
    torch.manual_seed(0)
    coordinates = np.random.default_rng(0).normal(size=(30, 3))
    mapped = GaussianReadout((4, 36, 64), coordinates, ReadoutConfig(offset_weight=1.0))
    assert mapped.edge_fraction() == 0.0
    with torch.no_grad():
        mapped.offset[:6] = torch.tensor([3.0, 0.0])
    assert mapped.edge_fraction() == pytest.approx(6 / 30)


def test_offset_weight_is_checked():
    assert ReadoutConfig().offset_weight is None
    assert ReadoutConfig(offset_weight=0).offset_weight == 0.0
    with pytest.raises(InvalidInput, match=r"offset_weight: -1.*expected a number in \[0.0"):
        ReadoutConfig(offset_weight=-1)
    with pytest.raises(
        InvalidInput, match=re.escape("offset_weight: 1.0; expected None with use_coordinates False")
    ):
        ReadoutConfig(use_coordinates=False, offset_weight=1.0)
    with pytest.raises(InvalidInput, match="offset_weight: set without coordinates"):
        GaussianReadout((4, 5, 6), None, ReadoutConfig(offset_weight=1.0), n_neurons=3)
    config = replace(small("twin"), readout=ReadoutConfig(offset_weight=5.0))
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_position_warmup_is_checked_and_names_what_it_holds():
    assert ReadoutConfig().position_warmup == 0  # the baseline moves its positions from the start
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInput, match=r"position_warmup: .*expected an integer >= 0"):
            ReadoutConfig(position_warmup=bad)
    config = replace(small("twin"), readout=ReadoutConfig(position_warmup=2))
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    stored = small("twin").to_dict()  # a configuration written before the field
    del stored["readout"]["position_warmup"]
    assert ModelConfig.from_dict(stored).readout.position_warmup == 0
    coordinates = np.random.default_rng(0).normal(size=(6, 3))
    mapped = GaussianReadout((4, 5, 6), coordinates, ReadoutConfig(offset_weight=1.0))
    held = {id(p) for p in mapped.position_parameters()}
    assert held == {id(p) for p in [*mapped.mu_transform.parameters(), mapped.offset]}
    assert id(mapped.sigma) not in held and id(mapped.features) not in held
    free = GaussianReadout((4, 5, 6), None, ReadoutConfig(use_coordinates=False), n_neurons=3)
    assert free.position_parameters() == [free._mu]


def test_position_lr_scale_is_checked_and_stored():
    assert ReadoutConfig().position_lr_scale == 1.0  # the baseline: one learning rate for all
    for bad in (0, -0.5, True, "0.1", float("nan"), float("inf")):
        with pytest.raises(InvalidInput, match=r"position_lr_scale: .*expected a number"):
            ReadoutConfig(position_lr_scale=bad)
    with pytest.raises(InvalidInput, match=r"position_lr_scale: inf; expected a number in \(0\.0, inf\)"):
        ReadoutConfig(position_lr_scale=float("inf"))
    for name in ("l1_weight", "init_sigma", "offset_weight"):  # every unbounded field refuses infinity
        with pytest.raises(InvalidInput, match=rf"{name}: inf; expected a number in [\[(]0\.0, inf\)"):
            ReadoutConfig(**{name: float("inf")})
    assert ReadoutConfig(position_lr_scale=2).position_lr_scale == 2.0
    config = replace(small("twin"), readout=ReadoutConfig(position_lr_scale=0.1))
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    stored = small("twin").to_dict()  # a configuration written before the field
    del stored["readout"]["position_lr_scale"]
    assert ModelConfig.from_dict(stored).readout.position_lr_scale == 1.0


def test_train_mode_samples_positions_and_eval_is_deterministic():
    torch.manual_seed(0)
    readout = GaussianReadout((4, 10, 12), np.random.default_rng(0).normal(size=(6, 3)), ReadoutConfig())
    features = torch.randn(2, 4, 10, 12)
    readout.train()
    assert not torch.equal(readout(features), readout(features))
    readout.eval()
    assert torch.equal(readout(features), readout(features))
    model = build(small("cnn"), recordings())
    x = inputs()
    assert not torch.equal(run(model, "26872-17-20", x), run(model, "26872-17-20", x))
    model.eval()
    assert torch.equal(run(model, "26872-17-20", x), run(model, "26872-17-20", x))


def test_learned_positions_start_in_init_range_and_stay_on_the_map():
    torch.manual_seed(0)
    readout = GaussianReadout((4, 10, 12), None, ReadoutConfig(init_mu_range=0.3), n_neurons=50)
    assert readout._mu.abs().max() <= 0.3
    with torch.no_grad():
        readout._mu[0] = torch.tensor([2.0, -5.0])
    readout.train()
    readout(torch.randn(1, 4, 10, 12))
    assert readout._mu.abs().max() <= 1.0  # projected back, as FullGaussian2d clamps mu in place


def test_readout_initial_parameters_and_coordinates():
    coordinates = np.array([[0.0, 0.0, 5.0], [10.0, 0.0, 5.0], [20.0, 40.0, 5.0]])
    normalized = normalize_coordinates(coordinates)
    np.testing.assert_allclose(normalized.mean(0), 0, atol=1e-6)
    assert np.abs(normalized).max() == pytest.approx(1.0)
    readout = GaussianReadout((8, 4, 4), coordinates, ReadoutConfig(init_sigma=0.1))
    torch.testing.assert_close(readout.features, torch.full((3, 8), 1 / 8))
    assert readout.sigma.shape == (3, 2, 2) and readout.sigma.abs().max() <= 0.1
    assert torch.all(readout.bias == 0)
    assert readout.mu().abs().max() < 1  # tanh


def test_l1_regularizer_sums_the_feature_weights():
    torch.manual_seed(0)
    readout = GaussianReadout((8, 4, 4), None, ReadoutConfig(l1_weight=0.5), n_neurons=3)
    with torch.no_grad():
        readout.features.normal_()
    torch.testing.assert_close(readout.regularizer(), 0.5 * readout.features.abs().sum())


def test_bias_starts_at_zero_or_at_the_mean_response():
    shapes = recordings()
    baseline = build(small("cnn"), shapes)  # the SENSORIUM 2022 baseline passes no mean activity
    assert all(torch.all(readout.bias == 0) for readout in baseline.readouts.values())
    config = small("cnn")
    model = build(replace(config, readout=replace(config.readout, bias_init="mean")), shapes)
    for key, shape in shapes.items():
        np.testing.assert_allclose(model.readouts[key].bias.detach().numpy(), shape.mean_response)
    with pytest.raises(InvalidInput, match="mean"):
        model.readouts["27204-5-13"].initialize_bias(np.ones(3))
    with pytest.raises(InvalidInput, match="mean_response"):
        build(model.config, {"a": RecordingShape(3, np.zeros((3, 3)), None)})


def test_model_regularizer_is_core_plus_readout():
    model = build(small("cnn_behavior"), recordings())
    key = "27204-5-13"
    expected = model.core.regularizer() + model.readouts[key].regularizer()
    torch.testing.assert_close(model.regularizer(key), expected)


# --- shifter and behaviour -------------------------------------------------------------------------


def test_shifter_is_the_baseline_mlp():
    shifter = Shifter()
    linears = [m for m in shifter.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 5), (5, 5), (5, 2)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in shifter.mlp) == 3
    assert shifter(torch.randn(4, 2) * 100).abs().max() <= 1
    assert shifter.regularizer() == 0


def test_behavior_and_pupil_center_change_the_prediction():
    torch.manual_seed(0)
    model = build(small("cnn_behavior"), recordings()).eval()
    x = inputs()
    base = run(model, "26872-17-20", x)
    assert not torch.allclose(base, run(model, "26872-17-20", {**x, "behavior": x["behavior"] + 1}))
    assert not torch.allclose(base, run(model, "26872-17-20", {**x, "pupil_center": x["pupil_center"] + 1}))
    image_only = build(small("cnn"), recordings()).eval()
    torch.testing.assert_close(
        run(image_only, "26872-17-20", x),
        run(image_only, "26872-17-20", {**x, "behavior": x["behavior"] + 1}),
    )


# --- errors ----------------------------------------------------------------------------------------


def test_missing_inputs_and_unknown_key_raise():
    model = build(small("cnn_behavior"), recordings())
    x = inputs()
    with pytest.raises(InvalidInput, match="behavior"):
        model(x["images"], "26872-17-20", pupil_center=x["pupil_center"])
    with pytest.raises(InvalidInput, match="pupil_center"):
        model(x["images"], "26872-17-20", behavior=x["behavior"])
    with pytest.raises(ModelNotFound, match="26872-17-20") as err:
        run(model, "11111-1-1", x)
    assert "11111-1-1" in str(err.value) and "27204-5-13" in str(err.value)
    with pytest.raises(ModelNotFound, match="11111-1-1"):
        model.regularizer("11111-1-1")
    with pytest.raises(InvalidInput, match="images"):
        model(
            torch.randn(2, 1, 30, 30), "26872-17-20", behavior=x["behavior"], pupil_center=x["pupil_center"]
        )
    with pytest.raises(InvalidInput, match="behavior"):
        model(x["images"], "26872-17-20", behavior=torch.randn(B, 2), pupil_center=x["pupil_center"])


def test_bad_recordings_raise():
    for bad_key in ("a.b", "", "training"):
        with pytest.raises(InvalidInput, match="data_key"):
            build("cnn", {bad_key: RecordingShape(3, np.zeros((3, 3)), None)})
    with pytest.raises(InvalidInput, match="coordinates"):
        build("cnn", {"a": RecordingShape(3, None, None)})
    with pytest.raises(InvalidInput, match="coordinates"):
        RecordingShape(3, np.zeros((4, 3)), None)
    with pytest.raises(InvalidInput, match="mean_response"):
        RecordingShape(3, None, np.zeros(2))
    with pytest.raises(InvalidInput, match="n_neurons"):
        RecordingShape(0, None, None)
    learned = replace(small("cnn"), readout=ReadoutConfig(use_coordinates=False))
    model = build(learned, {"a": RecordingShape(3, None, None)})
    assert model.readouts["a"].mu_transform is None


# --- configs and registry --------------------------------------------------------------------------


@pytest.mark.parametrize("name", available())
def test_config_round_trip(name):
    config = get_config(name)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: CoreConfig(kind="transformer"), "kind"),
        (lambda: CoreConfig(channels=0), "channels"),
        (lambda: CoreConfig(hidden_kernel=4), "hidden_kernel"),
        (lambda: CoreConfig(dropout=1.0), "dropout"),
        (lambda: CoreConfig(batch_norm_momentum=0.0), "batch_norm_momentum"),
        (lambda: CoreConfig(depthwise="yes"), "depthwise"),
        (lambda: CoreConfig(layers=2.5), "layers"),
        (lambda: ReadoutConfig(init_mu_range=1.5), "init_mu_range"),
        (lambda: ReadoutConfig(init_sigma=0.0), "init_sigma"),
        (lambda: ReadoutConfig(l1_weight=-1.0), "l1_weight"),
        (lambda: ReadoutConfig(bias_init="log_mean"), "bias_init"),
        (lambda: ModelConfig(name="", core=CoreConfig(), readout=ReadoutConfig()), "name"),
        (
            lambda: ModelConfig(name="x", core=CoreConfig(), readout=ReadoutConfig(), behavior_channels=True),
            "core.in_channels",
        ),
        (
            lambda: ModelConfig(name="x", core=CoreConfig(), readout=ReadoutConfig(), image_shape=(36,)),
            "image_shape",
        ),
        (
            lambda: ModelConfig(name="x", core=CoreConfig(), readout=ReadoutConfig(), correlation_weight=-1),
            "correlation_weight",
        ),
        (
            lambda: ModelConfig(name="x", core=CoreConfig(), readout=ReadoutConfig(), input_resize="cubic"),
            "input_resize",
        ),
        (lambda: ModelConfig.from_dict({**get_config("cnn").to_dict(), "colour": True}), "colour"),
        (lambda: ModelConfig.from_dict({**get_config("cnn").to_dict(), "core": {"chanels": 3}}), "chanels"),
    ],
)
def test_invalid_configs_name_the_field(make, field):
    with pytest.raises(InvalidInput, match=field):
        make()


def test_the_baselines_resize_bilinearly_and_the_twin_by_area():
    """The baselines keep SENSORIUM's bilinear resize without anti-aliasing; the twin averages areas."""
    assert {name: get_config(name).input_resize for name in available()} == {
        "ln": "bilinear",
        "cnn": "bilinear",
        "cnn_behavior": "bilinear",
        "twin": "area",
        "twin_behavior": "area",
    }
    stored = get_config("twin").to_dict()
    del stored["input_resize"]  # a run stored before the field existed keeps the resize it trained with
    assert ModelConfig.from_dict(stored).input_resize == "bilinear"


def test_the_loss_is_the_model_s_unless_the_training_config_sets_its_correlation_weight():
    """twin and twin_behavior train with the winners' Poisson + (1 - correlation) loss by default."""
    from training.trainer import TrainConfig, _loss, correlation_loss, poisson_loss

    assert {name: get_config(name).correlation_weight for name in available()} == {
        "ln": 0.0,
        "cnn": 0.0,
        "cnn_behavior": 0.0,
        "twin": 1.0,
        "twin_behavior": 1.0,
    }
    stored = get_config("cnn").to_dict()
    del stored["correlation_weight"]  # a run stored before the field existed keeps its Poisson loss
    assert ModelConfig.from_dict(stored).correlation_weight == 0.0
    torch.manual_seed(0)
    key = next(iter(KEYS))
    batch = {**inputs(8), "responses": torch.rand(8, KEYS[key]) * 3}
    for name, override, expected in (
        ("twin", None, 1.0),
        ("cnn", None, 0.0),
        ("twin", 0.0, 0.0),
        ("cnn", 0.5, 0.5),
    ):
        model = build(small(name), recordings()).eval()  # eval: the same prediction on every call
        config = TrainConfig(correlation_weight=override, channels_last=False).for_model(model.config)
        assert config.correlation_weight == expected
        with torch.no_grad():
            prediction = run(model, key, batch)
            want = poisson_loss(prediction, batch["responses"])
            want = want + expected * correlation_loss(prediction, batch["responses"])
            got = _loss(model, key, batch, config, config.correlation_weight_in(0))
        torch.testing.assert_close(got, want)
        assert float(correlation_loss(prediction, batch["responses"])) > 1  # the term is not negligible
    with pytest.raises(InvalidInput, match=r"correlation_weight: -0\.5; expected a number in \[0\.0, inf\)"):
        TrainConfig(correlation_weight=-0.5)


def test_the_correlation_term_s_rounds_come_from_the_model_unless_the_training_config_sets_them():
    from training.trainer import TrainConfig

    assert {get_config(name).correlation_rounds for name in available()} == {None}  # throughout
    stored = get_config("twin").to_dict()
    del stored["correlation_rounds"]  # a run stored before the field existed kept the term throughout
    assert ModelConfig.from_dict(stored).correlation_rounds is None
    once = replace(get_config("twin"), correlation_rounds=1)
    assert ModelConfig.from_dict(once.to_dict()) == once
    settled = TrainConfig().for_model(once)
    assert (settled.correlation_weight, settled.correlation_rounds) == (1.0, 1)
    assert [settled.correlation_weight_in(r) for r in range(3)] == [1.0, 0.0, 0.0]
    settled = TrainConfig(correlation_rounds=2).for_model(once)
    assert [settled.correlation_weight_in(r) for r in range(3)] == [1.0, 1.0, 0.0]
    throughout = TrainConfig(correlation_weight=0.5).for_model(get_config("twin"))
    assert [throughout.correlation_weight_in(r) for r in range(5)] == [0.5] * 5
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(
            InvalidInput, match=rf"correlation_rounds: {re.escape(repr(bad))}; expected an integer >= 1"
        ):
            replace(get_config("twin"), correlation_rounds=bad)
        with pytest.raises(
            InvalidInput, match=rf"correlation_rounds: {re.escape(repr(bad))}; expected an integer >= 1"
        ):
            TrainConfig(correlation_rounds=bad)


def test_registry_refuses_duplicates_and_unknown_names(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    with pytest.raises(InvalidInput, match="cnn"):
        register("cnn")(lambda: get_config("cnn"))

    @register("tiny_test_model")
    def tiny() -> ModelConfig:
        return small("cnn")

    assert "tiny_test_model" in available()
    assert isinstance(build("tiny_test_model", recordings()), Twin)
    with pytest.raises(InvalidInput, match="no_such_model") as err:
        get_config("no_such_model")
    assert all(name in str(err.value) for name in ("ln", "cnn", "cnn_behavior"))
    with pytest.raises(InvalidInput, match="no_such_model"):
        build("no_such_model", recordings())
