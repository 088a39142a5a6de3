"""The twin's own ingredients on tiny shapes: resnet core, derived input channels, behaviour modulator.

Every ingredient is a config field, so each is built and run both on and off here; the registry-wide
checks (forward/backward, state dict, torch.export without grid_sample) in test_models.py cover the
registered `twin` and `twin_behavior` too.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.models import CoreConfig, ModelConfig, ReadoutConfig, RecordingShape, build, get_config
from training.models.core import Core, DivisiveNormalization, ResidualBlock, laplace_l2norm
from training.models.inputs import InputChannels, centered_copy, sobel_gradients
from training.models.modulator import MAX_LOG_GAIN, Modulator
from twin.errors import InvalidInput

B, H, W = 3, 36, 64
SMALL = (18, 22)  # image_shape of the ingredient variants: the grid of them stays fast
KEYS = {"26872-17-20": 7, "27204-5-13": 5}
KEY = "27204-5-13"


def recordings() -> dict[str, RecordingShape]:
    rng = np.random.default_rng(0)
    return {
        key: RecordingShape(n_neurons=n, coordinates=rng.normal(0, 200, size=(n, 3)).astype(np.float32))
        for key, n in KEYS.items()
    }


def inputs(batch: int = B, shape: tuple[int, int] = (H, W)) -> dict[str, torch.Tensor]:
    return {
        "images": torch.randn(batch, 1, *shape),
        "behavior": torch.rand(batch, 3) * 3,
        "pupil_center": torch.randn(batch, 2),
    }


def run(model, x: dict[str, torch.Tensor], key: str = KEY) -> torch.Tensor:
    return model(x["images"], key, behavior=x["behavior"], pupil_center=x["pupil_center"])


def variant(
    *, gradients=True, centered=True, behavior=True, shifter=True, modulator=True, **core
) -> ModelConfig:
    """twin_behavior, tiny (SMALL images), with the chosen ingredients; core.in_channels follows the flags."""
    base = get_config("twin_behavior")
    in_channels = 1 + centered + 2 * gradients + 3 * behavior
    core = replace(base.core, **{"channels": 4, "layers": 2, "in_channels": in_channels, **core})
    return replace(
        base,
        core=core,
        input_gradients=gradients,
        input_centered=centered,
        behavior_channels=behavior,
        shifter=shifter,
        modulator=modulator,
        modulator_hidden=4,
        image_shape=SMALL,
    )


# --- registry --------------------------------------------------------------------------------------


def test_registered_twins():
    image_only, plus = get_config("twin"), get_config("twin_behavior")
    for config in (image_only, plus):
        assert config.core.kind == "resnet" and config.core.residual and config.core.dropout == 0.1
        assert config.input_gradients and config.input_centered
        assert config.core.normalization  # first layer divisively normalized (bench/README.md "Core form")
        # a run stored before the field existed keeps the architecture it trained: no normalization
        stored = config.to_dict()
        del stored["core"]["normalization"], stored["core"]["normalization_kernel"]
        assert ModelConfig.from_dict(stored) == replace(
            config, core=replace(config.core, normalization=False)
        )
    assert image_only.core.in_channels == 4 and plus.core.in_channels == 7
    assert not (image_only.behavior_channels or image_only.shifter or image_only.modulator)
    assert plus.behavior_channels and plus.shifter and plus.modulator


# --- every ingredient on and off -------------------------------------------------------------------


INGREDIENTS = ("gradients", "centered", "behavior", "shifter", "modulator")
# All on, all off, and each one alone switched off (from all on) and on (from all off).
TOGGLES = [
    {name: value if name != flipped else not value for name in INGREDIENTS}
    for value in (True, False)
    for flipped in (None, *INGREDIENTS)
]


@pytest.mark.parametrize(
    "flags", TOGGLES, ids=lambda flags: "-".join(k for k, v in flags.items() if v) or "none"
)
def test_each_ingredient_on_and_off_builds_and_trains(flags):
    torch.manual_seed(0)
    model = build(variant(**flags), recordings())
    x = inputs(shape=SMALL)
    out = run(model, x)
    assert out.shape == (B, KEYS[KEY]) and torch.all(out > 0)
    (out.sum() + model.regularizer(KEY)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.core.parameters())
    assert (model.modulators is not None) == flags["modulator"]
    assert (model.shifters is not None) == flags["shifter"]
    if flags["modulator"]:
        last = model.modulators[KEY].mlp[-1]
        assert last.weight.grad.abs().sum() > 0  # the zero-initialized layer learns from the first step
    model.eval()
    assert torch.equal(run(model, x), run(model, x))


@pytest.mark.parametrize(
    "core",
    [
        {"kind": "cnn"},
        {"kind": "resnet", "residual": False},
        {"kind": "resnet", "dropout": 0.0},
        {"kind": "resnet", "depthwise": True, "hidden_kernel": 5},
        {"kind": "resnet", "channels": 6, "layers": 4},
        {"kind": "resnet", "normalization": True},
        {"kind": "cnn", "normalization": True, "normalization_kernel": 3},
    ],
)
def test_core_variants_build_and_run(core):
    torch.manual_seed(0)
    model = build(variant(**core), recordings())
    out = run(model, inputs(shape=SMALL))
    out.sum().backward()
    assert out.shape == (B, KEYS[KEY])


# --- divisive normalization -----------------------------------------------------------------------


def _trained_like(norm: DivisiveNormalization, seed: int) -> DivisiveNormalization:
    """Parameters away from their uniform start, so that channels and pool taps differ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    return norm


def test_divisive_normalization_divides_each_channel_by_its_pooled_energy():
    """Against the formula in float64 numpy: y_c = x_c / sqrt(beta_c + sum_d gamma_cd (k_c * x_d^2)),
    the pool k_c zero-padded and the product of its softplus column and row."""
    c, k = 3, 5
    norm = _trained_like(DivisiveNormalization(c, k), seed=0)
    x = torch.randn(2, c, 7, 9, generator=torch.Generator().manual_seed(1))
    softplus = lambda t: np.log1p(np.exp(t.detach().double().numpy()))  # noqa: E731
    gamma, beta = softplus(norm.raw_gamma), softplus(norm.raw_beta) + 1e-3
    pool = (
        softplus(norm.raw_pool_y)[:, 0, :, 0, None] * softplus(norm.raw_pool_x)[:, 0, 0, None, :]
    )  # (c,k,k)
    xs = x.double().numpy()
    mixed = np.einsum("cd,bdyx->bcyx", gamma, xs**2)
    padded = np.pad(mixed, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    energy = np.zeros_like(mixed)
    for dy in range(k):
        for dx in range(k):
            energy += pool[None, :, dy, dx, None, None] * padded[:, :, dy : dy + 7, dx : dx + 9]
    expected = xs / np.sqrt(beta[None, :, None, None] + energy)
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_divisive_normalization_saturates_with_contrast_and_is_linear_at_low_contrast():
    norm = _trained_like(DivisiveNormalization(4, 5), seed=2)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        high, higher = norm(100 * x), norm(1000 * x)
        low = norm(1e-4 * x)
        beta = F.softplus(norm.raw_beta) + 1e-3
    # scaling the input 10x at high contrast leaves the output (a ratio) nearly unchanged ...
    assert torch.allclose(high, higher, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(norm(x), higher, rtol=1e-2)
    # ... and at low contrast the energy vanishes: y = x / sqrt(beta)
    torch.testing.assert_close(low, 1e-4 * x / beta.sqrt()[None, :, None, None], rtol=1e-4, atol=0)


def test_normalization_sits_in_the_first_layer_before_its_elu():
    core = Core(CoreConfig(kind="resnet", in_channels=1, channels=4, layers=2, normalization=True))
    kinds = [type(m) for m in core.input_layer]
    assert kinds == [torch.nn.Conv2d, torch.nn.BatchNorm2d, DivisiveNormalization, torch.nn.ELU]
    assert not any(isinstance(m, DivisiveNormalization) for m in Core(CoreConfig()).modules())


# --- resnet core -----------------------------------------------------------------------------------


def test_resnet_core_shapes_and_blocks():
    config = CoreConfig(kind="resnet", channels=8, layers=3, hidden_kernel=3, depthwise=False, dropout=0.1)
    assert config.residual  # resolved per kind
    assert not CoreConfig().residual and CoreConfig(kind="resnet", residual=False).residual is False
    core = Core(config)
    assert isinstance(core.input_layer[-1], torch.nn.ELU)  # the baseline's first layer, ELU included
    assert [type(m) for m in core.hidden_layers] == [ResidualBlock, ResidualBlock]
    assert core(torch.randn(2, 1, H, W)).shape == (2, 8, 28, 56) == (2, *core.output_shape(H, W))
    strided = Core(replace(config, input_kernel=4, input_stride=2))
    assert strided(torch.randn(1, 1, H, W)).shape[1:] == strided.output_shape(H, W) == (8, 17, 31)
    padded = Core(replace(config, pad_input=True))
    assert padded(torch.randn(1, 1, H, W)).shape[1:] == (8, H, W)
    torch.testing.assert_close(core.regularizer(), 6.3831 * laplace_l2norm(core.input_layer[0].weight))


def test_residual_block_adds_the_skip_before_the_elu():
    torch.manual_seed(0)
    config = CoreConfig(kind="resnet", channels=4, hidden_kernel=3)
    block = ResidualBlock(config).eval()
    plain = ResidualBlock(replace(config, residual=False)).eval()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 4, 6, 7)
    with torch.no_grad():
        branch = block.branch(x)
        torch.testing.assert_close(block(x), F.elu(x + branch))
        torch.testing.assert_close(plain(x), F.elu(branch))


def test_resnet_dropout_only_while_training():
    torch.manual_seed(0)
    core = Core(CoreConfig(kind="resnet", channels=8, layers=2, dropout=0.5))
    x = torch.randn(2, 1, H, W)
    assert not torch.equal(core(x), core(x))
    core.eval()
    assert torch.equal(core(x), core(x))


# --- derived input channels ------------------------------------------------------------------------


def test_sobel_of_a_ramp_is_its_slope_inside():
    kernels = InputChannels(gradients=True, centered=False).sobel_kernels
    rows, cols = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    ramp = (0.5 * cols - 2.0 * rows)[None, None]  # (1, 1, 10, 12): slope 0.5 along x, -2 along y
    grad = sobel_gradients(ramp, kernels)  # (1, 2, 10, 12)
    inside = grad[..., 1:-1, 1:-1]
    torch.testing.assert_close(inside[:, 0], torch.full_like(inside[:, 0], 0.5))
    torch.testing.assert_close(inside[:, 1], torch.full_like(inside[:, 1], -2.0))
    # Edge-replicated border: half the slope across the border, never a jump to zero padding.
    torch.testing.assert_close(grad[0, 0, 5, 0], torch.tensor(0.25))
    flat = sobel_gradients(torch.full((2, 1, 5, 6), 3.0), kernels)
    assert torch.all(flat == 0)


def test_centered_copy_has_zero_mean_and_unit_std_per_image():
    images = torch.randn(4, 1, H, W) * torch.tensor([0.1, 1.0, 5.0, 20.0])[:, None, None, None] + 7
    out = centered_copy(images)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3), correction=0), torch.ones(4), atol=1e-3, rtol=0)
    constant = centered_copy(torch.full((1, 1, 4, 4), 2.5))
    assert torch.all(constant == 0)  # no contrast: zeros, not NaN


def test_input_channels_order_and_count():
    images = torch.randn(2, 1, 8, 9)
    layer = InputChannels(gradients=True, centered=True)
    out = layer(images)
    assert out.shape == (2, 4, 8, 9) and layer.out_channels == 4
    torch.testing.assert_close(out[:, :1], images)
    torch.testing.assert_close(out[:, 1:2], centered_copy(images))
    torch.testing.assert_close(out[:, 2:], sobel_gradients(images, layer.sobel_kernels))
    off = InputChannels(gradients=False, centered=False)
    assert off(images) is images and off.out_channels == 1


def test_fixed_kernels_are_not_in_the_state_dict():
    model = build(get_config("twin"), recordings())
    assert not any("sobel" in name for name in model.state_dict())
    assert not any(True for _ in model.inputs.parameters())


# --- modulator -------------------------------------------------------------------------------------


def test_modulator_is_exactly_the_identity_gain_at_initialization():
    torch.manual_seed(0)
    with_gain = build(variant(behavior=False, shifter=False), recordings()).eval()
    without = build(variant(behavior=False, shifter=False, modulator=False), recordings()).eval()
    without.load_state_dict(with_gain.state_dict(), strict=False)
    x = inputs(shape=SMALL)
    assert torch.equal(with_gain.modulators[KEY](x["behavior"]), torch.ones(B, KEYS[KEY]))
    with torch.no_grad():
        torch.testing.assert_close(run(with_gain, x), run(without, x), rtol=0, atol=0)


def test_modulator_gain_multiplies_the_rate_and_follows_behavior():
    torch.manual_seed(0)
    model = build(variant(behavior=False, shifter=False), recordings()).eval()
    modulator = model.modulators[KEY]
    with torch.no_grad():
        modulator.mlp[-1].weight.normal_()
    x = inputs(shape=SMALL)
    moved = {**x, "behavior": x["behavior"] + 1}
    with torch.no_grad():
        rate = F.elu(model.readouts[KEY](model.core(model.inputs(x["images"])))) + 1
        torch.testing.assert_close(run(model, x), rate * modulator(x["behavior"]))  # after ELU + 1
        assert not torch.allclose(run(model, x), run(model, moved))
        # The image path does not read behaviour here: only the gain changed.
        torch.testing.assert_close(
            run(model, moved) / run(model, x), modulator(moved["behavior"]) / modulator(x["behavior"])
        )


def test_modulator_gain_is_bounded_and_positive():
    modulator = Modulator(6, hidden=3)
    with torch.no_grad():
        modulator.mlp[-1].weight.fill_(100.0)
    gain = modulator(torch.tensor([[1e3, 1e3, 1e3], [-1e3, -1e3, -1e3]]))
    assert torch.all(torch.isfinite(gain)) and torch.all(gain > 0)
    assert gain.max() <= np.exp(MAX_LOG_GAIN) and gain.min() >= np.exp(-MAX_LOG_GAIN)
    with pytest.raises(InvalidInput, match="behavior"):
        modulator(torch.randn(2, 4))
    with pytest.raises(InvalidInput, match="hidden"):
        Modulator(3, hidden=0)


def test_missing_behavior_raises_for_a_modulator():
    x = inputs(shape=SMALL)
    for config in (variant(behavior=False, shifter=False), variant()):  # modulator alone; twin_behavior
        model = build(config, recordings())
        with pytest.raises(InvalidInput, match="behavior"):
            model(x["images"], KEY, pupil_center=x["pupil_center"])
        with pytest.raises(InvalidInput, match="behavior"):
            model(x["images"], KEY, behavior=torch.randn(B, 2), pupil_center=x["pupil_center"])
    image_only = build(variant(behavior=False, shifter=False, modulator=False), recordings())
    assert image_only(x["images"], KEY).shape == (B, KEYS[KEY])  # the twin track: images alone suffice


# --- configs ---------------------------------------------------------------------------------------


def test_config_round_trip_with_the_new_fields():
    config = replace(
        variant(gradients=True, centered=False, modulator=True, residual=False, dropout=0.3),
        modulator_hidden=7,
    )
    data = config.to_dict()
    assert data["input_gradients"] is True and data["input_centered"] is False
    assert data["modulator_hidden"] == 7 and data["core"]["residual"] is False
    assert ModelConfig.from_dict(json.loads(json.dumps(data))) == config


# cnn_behavior as checkpoints stored it before the twin's fields existed.
OLD_CNN_BEHAVIOR = {
    "name": "cnn_behavior",
    "core": {
        "kind": "cnn",
        "in_channels": 4,
        "channels": 64,
        "layers": 4,
        "input_kernel": 9,
        "hidden_kernel": 7,
        "depthwise": True,
        "input_stride": 1,
        "pad_input": False,
        "dropout": 0.0,
        "residual": False,
        "laplace_weight": 6.3831,
        "batch_norm_momentum": 0.9,
    },
    "readout": {
        "l1_weight": 0.0076,
        "init_sigma": 0.1,
        "init_mu_range": 0.3,
        "position_hidden": 30,
        "use_coordinates": True,
        "bias_init": "zero",
    },
    "behavior_channels": True,
    "shifter": True,
    "modulator": False,
    "image_shape": [36, 64],
}


def test_old_configs_still_load():
    config = ModelConfig.from_dict(json.loads(json.dumps(OLD_CNN_BEHAVIOR)))
    assert config == get_config("cnn_behavior")
    assert not (config.input_gradients or config.input_centered) and config.modulator_hidden == 16
    core = dict(OLD_CNN_BEHAVIOR["core"])
    del core["residual"]  # a core stored without the field gets the kind's default
    assert ModelConfig.from_dict({**OLD_CNN_BEHAVIOR, "core": core}).core.residual is False


def test_old_state_dicts_still_load():
    """A baseline gained no state-dict keys: the derived-channel module holds only a non-persistent buffer."""
    model = build(replace(get_config("cnn"), core=replace(get_config("cnn").core, channels=4)), recordings())
    assert not any(name.startswith("inputs.") for name in model.state_dict())


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: replace(get_config("twin"), input_gradients="yes"), "input_gradients"),
        (lambda: replace(get_config("twin"), input_centered=1), "input_centered"),
        (lambda: replace(get_config("twin_behavior"), modulator_hidden=0), "modulator_hidden"),
        (lambda: replace(get_config("twin"), input_gradients=False), "core.in_channels"),
        (lambda: replace(get_config("twin_behavior"), behavior_channels=False), "core.in_channels"),
        (lambda: CoreConfig(kind="resnet", residual="no"), "residual"),
        (lambda: CoreConfig(kind="densenet"), "kind"),
        (lambda: CoreConfig(normalization="yes"), "normalization"),
        (lambda: CoreConfig(normalization=True, normalization_kernel=4), "normalization_kernel"),
        (lambda: CoreConfig(normalization_kernel=0), "normalization_kernel"),
        (
            lambda: ModelConfig(name="x", core=CoreConfig(), readout=ReadoutConfig(), input_centered=True),
            "core.in_channels",
        ),
    ],
)
def test_invalid_twin_configs_name_the_field(make, field):
    with pytest.raises(InvalidInput, match=field):
        make()


def test_in_channels_error_lists_the_parts():
    with pytest.raises(InvalidInput, match=r"expected 7 \(1 image channel \+ 1 centred copy \+ 2 gradient"):
        replace(get_config("twin_behavior"), core=replace(get_config("twin_behavior").core, in_channels=4))


def test_an_image_only_core_starts_a_behaviour_model_with_zero_behaviour_weights():
    """twin (images) pre-trained -> twin_behavior: image channels copied, behaviour channels at zero."""
    from training.run import INPUT_WEIGHT, initialize_from

    rng = np.random.default_rng(0)
    shapes = {key: RecordingShape(n, rng.uniform(0, 1, (n, 3))) for key, n in (("a", 5), ("b", 6))}
    narrow = replace(get_config("twin").core, channels=8)
    torch.manual_seed(0)
    pretrained = build(replace(get_config("twin"), core=narrow), shapes).eval()
    behavior = replace(get_config("twin_behavior"), core=replace(narrow, in_channels=7))
    torch.manual_seed(1)
    net = build(behavior, {"b": shapes["b"]}).eval()
    start = initialize_from(net, pretrained.state_dict())
    assert start["inflated"] == [INPUT_WEIGHT]
    assert not any(k.startswith(("core.", "readouts.")) for k in start["fresh"])  # shifter, modulator
    weight = net.state_dict()[INPUT_WEIGHT]
    torch.testing.assert_close(weight[:, :4], pretrained.state_dict()[INPUT_WEIGHT])
    assert torch.count_nonzero(weight[:, 4:]) == 0
    # so the core computes what the pretrained one does, whatever the behaviour
    images = torch.randn(3, 1, *behavior.image_shape)
    planes = torch.randn(3, 3, 1, 1).expand(-1, -1, *behavior.image_shape)
    with torch.no_grad():
        ours = net.core(torch.cat([net.inputs(images), planes], dim=1))
        theirs = pretrained.core(pretrained.inputs(images))
    torch.testing.assert_close(ours, theirs)

    other_kernel = replace(behavior, core=replace(behavior.core, input_kernel=7))
    with pytest.raises(InvalidInput, match="init_from: the pretrained core does not fit"):
        initialize_from(build(other_kernel, {"b": shapes["b"]}), pretrained.state_dict())
