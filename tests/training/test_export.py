"""Export: the ONNX artifact answers as the torch ensemble does (both tracks); writes are atomic."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import training.export as export
from training.data import Preprocessing, preprocess_images
from training.ensemble import mean_and_spread
from training.export import export_run
from training.models import get_config
from training.run import load_members, train_run
from training.trainer import TrainConfig
from twin import artifact
from twin.cli import cli
from twin.data import load_recording
from twin.errors import InvalidInput
from twin.resize import interpolation_matrix, resize, resize_adjoint

FAST = TrainConfig(max_epochs=1, batch_size=64, patience=1, lr_decay_steps=1, seed=0)
RTOL = 1e-5  # of the largest magnitude: float32 graphs vs float32 torch
# Gradients are sums of terms of both signs (the weights are random normal), so float32 cancellation
# decides their last digits: for the behaviour fixture, against a float64 torch gradient, the exported
# graph's worst pixel is off by 1.2e-5 of the largest magnitude and torch's own float32 autograd by
# 3.8e-6 (one model pixel of one image; the median pixel by 1e-8). A wrong gradient graph is off by
# orders of magnitude more.
GRADIENT_RTOL = 3e-5


def _torch_ensemble(run: Path, key: str) -> tuple[list, Preprocessing]:
    description, nets = load_members(run, selected_only=True)
    return nets, Preprocessing.from_dict(description["preprocessing"][key])


def _inputs(pre: Preprocessing, batch: int, size: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """Raw inputs as an experimenter has them: 8-bit images, behaviour and pupil centre in raw units."""
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (batch, *size)).astype(np.uint8),
        "behavior": (rng.uniform(0.2, 2.0, (batch, 3)) * pre.behavior_std).astype(np.float32),
        "pupil_center": (pre.pupil_mean + rng.normal(size=(batch, 2)) * pre.pupil_std).astype(np.float32),
    }


def _reference(nets, pre: Preprocessing, key: str, x: dict[str, np.ndarray], images: torch.Tensor):
    """Members (M, B, N) of the torch ensemble through the training pipeline's own preprocessing."""
    size = pre.image_size
    model_images = preprocess_images(images[:, None], pre.image_mean, pre.image_std, size, pre.resize)
    behavior = torch.from_numpy(x["behavior"] / pre.behavior_std)
    pupil = torch.from_numpy((x["pupil_center"] - pre.pupil_mean) / pre.pupil_std)
    out = [net(model_images, key, behavior=behavior, pupil_center=pupil) for net in nets]
    return torch.stack(out) * torch.from_numpy(pre.response_std)  # (M, B, N)


def _reference_gradient(nets, pre, key, x, weights: np.ndarray) -> np.ndarray:
    """d(sum weights * mean) / d raw images by torch autograd.

    Computed on a batch of at least 2: torch 2.13's CPU BatchNorm backward in eval mode is wrong at
    batch 1 when the incoming gradient is channels-last (as the readout's is), so a batch of one is
    padded with a copy of itself (images do not interact, so its row is unchanged).
    """
    batch = len(x["images"])
    padded = {k: np.concatenate([v, v]) if batch == 1 else v for k, v in x.items()}
    w = np.concatenate([weights, weights]) if batch == 1 else weights
    images = torch.from_numpy(padded["images"].astype(np.float32)).requires_grad_(True)
    mean = _reference(nets, pre, key, padded, images).mean(0)
    (gradient,) = torch.autograd.grad((mean * torch.from_numpy(w)).sum(), images)
    return gradient.numpy()[:batch]


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> float:
    """Largest error relative to the largest magnitude; asserts it is below rtol."""
    assert actual.shape == expected.shape and actual.dtype == np.float32
    error = float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))
    assert error < rtol, error
    return error


def test_resize_is_torch_interpolate_and_its_adjoint():
    rng = np.random.default_rng(0)
    pairs = [((72, 128), (36, 64)), ((144, 256), (36, 64)), ((37, 65), (36, 64)), ((36, 64), (50, 90))]
    for source, target in pairs:
        images = rng.uniform(0, 255, (3, *source)).astype(np.float32)
        x = torch.from_numpy(images).requires_grad_(True)
        expected = F.interpolate(x[:, None], target, mode="bilinear", align_corners=False, antialias=False)
        np.testing.assert_allclose(resize(images, target), expected[:, 0].detach(), rtol=1e-5, atol=1e-3)
        g = rng.normal(size=(3, *target)).astype(np.float32)
        (torch_adjoint,) = torch.autograd.grad(expected[:, 0], x, torch.from_numpy(g))
        np.testing.assert_allclose(resize_adjoint(g, source), torch_adjoint.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(interpolation_matrix(5, 5), np.eye(5))
    np.testing.assert_allclose(interpolation_matrix(144, 36).sum(1), 1.0)


def test_area_resize_averages_each_footprint_and_training_resizes_the_same_way():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (3, 144, 256)).astype(np.float32)
    blocks = images.reshape(3, 36, 4, 64, 4).mean((2, 4))  # an integer factor: the 4 x 4 block means
    np.testing.assert_allclose(resize(images, (36, 64), "area"), blocks, rtol=1e-5)
    x = torch.from_numpy(images)[:, None]
    np.testing.assert_allclose(F.interpolate(x, (36, 64), mode="area")[:, 0], blocks, rtol=1e-5)
    for source, target in [((144, 256), (36, 64)), ((37, 65), (36, 64)), ((36, 64), (50, 90))]:
        m = interpolation_matrix(source[0], target[0], "area")
        np.testing.assert_allclose(m.sum(1), 1.0)  # weights of each output pixel sum to 1
        np.testing.assert_allclose(m.sum(0), target[0] / source[0])  # every input pixel counts equally
        a = rng.normal(size=(2, *source)).astype(np.float32)
        g = rng.normal(size=(2, *target)).astype(np.float32)
        inner = float(np.sum(resize(a, target, "area").astype(np.float64) * g))
        adjoint = float(np.sum(a.astype(np.float64) * resize_adjoint(g, source, "area")))
        assert abs(inner - adjoint) < 1e-4 * max(abs(inner), 1.0)  # <R a, g> = <a, R^T g>
        torch_area = preprocess_images(torch.from_numpy(a)[:, None], 0.0, 1.0, target, "area")[:, 0]
        np.testing.assert_allclose(torch_area.numpy(), resize(a, target, "area"), rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInput, match=r"^resize: 'cubic'; expected one of \['bilinear', 'area'\]"):
        resize(images, (36, 64), "cubic")


@pytest.mark.parametrize("batch", [1, 5])
def test_image_only_artifact_matches_the_torch_ensemble(tiny_run, tiny_artifact, batch):
    twin = artifact.load(tiny_artifact, threads=2)
    assert twin.data_keys == ["90001-1-1", "90002-1-1"]
    for seed, key in enumerate(twin.data_keys):
        nets, pre = _torch_ensemble(tiny_run, key)
        x = _inputs(pre, batch, pre.image_size, seed)
        onnx_twin = twin.twin(key)
        mean, std = onnx_twin.predict(x["images"])
        members = onnx_twin.predict_members(x["images"])
        with torch.no_grad():
            expected = _reference(nets, pre, key, x, torch.from_numpy(x["images"].astype(np.float32))).numpy()
        expected_mean, expected_std = mean_and_spread(list(expected))
        assert members.shape == (len(nets), batch, 150)
        _close(members, expected)
        _close(mean, expected_mean)
        np.testing.assert_allclose(std, expected_std, atol=RTOL * np.abs(expected).max())
        weights = np.random.default_rng(seed).normal(size=(batch, 150)).astype(np.float32)
        _close(
            onnx_twin.gradient(x["images"], weights),
            _reference_gradient(nets, pre, key, x, weights),
            GRADIENT_RTOL,
        )


@pytest.mark.parametrize("batch", [1, 5])
def test_behavior_artifact_matches_the_torch_ensemble_at_both_resolutions(
    tiny_behavior_run, tiny_behavior_artifact, batch
):
    twin = artifact.load(tiny_behavior_artifact, threads=2).twin()
    nets, pre = _torch_ensemble(tiny_behavior_run, "90002-1-1")
    assert twin.recording_image_size == (144, 256) and twin.image_size == (36, 64)
    assert twin.requires == {"behavior": True, "pupil_center": True}
    for size in (twin.recording_image_size, twin.image_size):
        x = _inputs(pre, batch, size, batch)
        mean, std = twin.predict(**x)
        members = twin.predict_members(**x)
        with torch.no_grad():
            expected = _reference(nets, pre, "90002-1-1", x, torch.from_numpy(x["images"].astype(np.float32)))
        expected_mean, expected_std = mean_and_spread(list(expected.numpy()))
        assert members.shape == (2, batch, 150) and np.all(std > 0)
        _close(members, expected.numpy())
        _close(mean, expected_mean)
        np.testing.assert_allclose(std, expected_std, atol=RTOL * np.abs(expected_mean).max())
        weights = np.random.default_rng(1).normal(size=(batch, 150)).astype(np.float32)
        gradient = twin.gradient(x["images"], weights, x["behavior"], x["pupil_center"])
        assert gradient.shape == (batch, *size)  # at the resolution the images came in
        _close(gradient, _reference_gradient(nets, pre, "90002-1-1", x, weights), GRADIENT_RTOL)


@pytest.mark.parametrize("batch", [1, 5])
def test_the_torch_twin_answers_as_the_artifact_does(tiny_behavior_run, tiny_behavior_artifact, batch):
    """TorchTwin: the run itself behind the twin interface, before export (DESIGN.md §3)."""
    from training.torch_twin import TorchTwin

    torch_twin = TorchTwin(tiny_behavior_run)
    onnx_twin = artifact.load(tiny_behavior_artifact, threads=2).twin()
    nets, pre = _torch_ensemble(tiny_behavior_run, "90002-1-1")
    identity = ("name", "version")
    assert {k: v for k, v in torch_twin.info().items() if k not in identity} == {
        k: v for k, v in onnx_twin.info().items() if k not in identity
    }
    assert torch_twin.info()["name"] == "twin-behavior-tiny" and torch_twin.members == [
        "member-1",
        "member-0",
    ]
    for size in (onnx_twin.recording_image_size, onnx_twin.image_size):
        x = _inputs(pre, batch, size, 10 + batch)
        (mean, std), (onnx_mean, onnx_std) = torch_twin.predict(**x), onnx_twin.predict(**x)
        _close(mean, onnx_mean)
        np.testing.assert_allclose(std, onnx_std, atol=RTOL * np.abs(onnx_mean).max())
        _close(torch_twin.predict_members(**x), onnx_twin.predict_members(**x))
        ids = onnx_twin.neuron_ids[[9, 2]]
        _close(torch_twin.predict(**x, neurons=ids)[0], onnx_twin.predict(**x, neurons=ids)[0])
        weights = np.random.default_rng(batch).normal(size=(batch, 150)).astype(np.float32)
        gradient = torch_twin.gradient(x["images"], weights, x["behavior"], x["pupil_center"])
        assert gradient.shape == (batch, *size)
        _close(gradient, _reference_gradient(nets, pre, "90002-1-1", x, weights), GRADIENT_RTOL)
    with pytest.raises(InvalidInput, match=r"^behavior: None; the twin of 90002-1-1 needs"):
        torch_twin.predict(x["images"])
    with pytest.raises(InvalidInput, match=r"^weights: shape \(\d, 149\)"):
        torch_twin.gradient(x["images"], weights[:, 1:], x["behavior"], x["pupil_center"])


def test_open_twin_opens_a_run_in_torch_and_experiments_agree_with_the_artifact(tiny_run, tiny_artifact):
    import twin
    from training.torch_twin import TorchTwin
    from twin.experiments import most_exciting_images, receptive_fields

    torch_twin = twin.open_twin(tiny_run, "90001-1-1")
    assert isinstance(torch_twin, TorchTwin)
    onnx_twin = twin.open_twin(tiny_artifact, "90001-1-1")
    ids = onnx_twin.neuron_ids[:4]
    on = [receptive_fields(t, ids, square=6, stride=6).on for t in (torch_twin, onnx_twin)]
    _close(on[0], on[1], rtol=1e-4)
    meis = [most_exciting_images(t, ids, steps=3, blur=0) for t in (torch_twin, onnx_twin)]
    _close(meis[0].activation, meis[1].activation, rtol=1e-3)
    with pytest.raises(InvalidInput, match=r"^data_key: None; run .* was trained on"):
        twin.open_twin(tiny_run)


def test_gradient_is_right_whatever_the_thread_count(tiny_behavior_run, tiny_behavior_artifact):
    """ORT's multi-threaded ScatterND(add) loses updates (TOOLCHAIN.md): the gradient runs one thread."""
    nets, pre = _torch_ensemble(tiny_behavior_run, "90002-1-1")
    x = _inputs(pre, 16, (36, 64), 7)
    weights = np.random.default_rng(7).normal(size=(16, 150)).astype(np.float32)
    expected = _reference_gradient(nets, pre, "90002-1-1", x, weights)
    for threads in (2, 4):
        twin = artifact.load(tiny_behavior_artifact, threads=threads).twin()
        for _ in range(3):
            _close(
                twin.gradient(x["images"], weights, x["behavior"], x["pupil_center"]), expected, GRADIENT_RTOL
            )


def test_behavior_inputs_are_required_and_checked(tiny_behavior_artifact):
    twin = artifact.load(tiny_behavior_artifact).twin()
    x = _inputs(Preprocessing.from_dict(twin.entry["preprocessing"]), 2, (36, 64), 0)
    with pytest.raises(InvalidInput, match=r"behavior: None.*\(2, 3\)"):
        twin.predict(x["images"], pupil_center=x["pupil_center"])
    with pytest.raises(InvalidInput, match=r"pupil_center: None"):
        twin.gradient(x["images"], np.ones((2, 150)), behavior=x["behavior"])
    with pytest.raises(InvalidInput, match=r"behavior: shape \(2, 2\); expected \(2, 3\)"):
        twin.predict(x["images"], x["behavior"][:, :2], x["pupil_center"])
    with pytest.raises(InvalidInput, match=r"pupil_center: contains NaN"):
        twin.predict(x["images"], x["behavior"], np.full((2, 2), np.nan))


def test_manifest_describes_the_artifact(tiny_behavior_run, tiny_behavior_artifact, tiny_x4):
    manifest = json.loads((tiny_behavior_artifact / "manifest.json").read_text())
    run = json.loads((tiny_behavior_run / "run.json").read_text())
    metrics = json.loads((tiny_behavior_run / "metrics.json").read_text())
    assert manifest["schema_version"] == artifact.SCHEMA_VERSION
    assert (manifest["name"], manifest["version"], manifest["data_keys"]) == ("mouse", 3, ["90002-1-1"])
    assert manifest["members"] == ["member-1", "member-0"]
    assert manifest["model"] == run["model"] and manifest["training"] == run["train"]
    assert manifest["validation_metrics"]["validation_correlation"] == metrics["validation_correlation"]
    assert manifest["torch_version"] == torch.__version__ and manifest["onnx_version"] == onnx.__version__
    entry = manifest["recordings"]["90002-1-1"]
    recording = load_recording(tiny_x4, progress=False)
    assert entry["neuron_ids"] == recording.neuron_ids.tolist() and entry["n_neurons"] == 150
    np.testing.assert_allclose(entry["cortical_coordinates"], recording.cell_motor_coordinates, rtol=1e-6)
    assert (entry["image_size"], entry["recording_image_size"]) == ([36, 64], [144, 256])
    assert entry["preprocessing"] == run["preprocessing"]["90002-1-1"]
    assert entry["preprocessing"]["resize"] == "area"  # twin_behavior's: served as it was trained
    assert entry["requires"] == {"behavior": True, "pupil_center": True}
    assert entry["response_units"] == "recording response units"
    images = {"name": "images", "dtype": "float32", "shape": ["batch", 36, 64], "units": "raw pixel units"}
    assert entry["inputs"]["responses"][0] == images
    gradient_inputs = [i["name"] for i in entry["inputs"]["gradient"]]
    assert gradient_inputs == ["images", "weights", "behavior", "pupil_center"]
    assert [o["name"] for o in entry["outputs"]["responses"]] == ["mean", "std", "members"]
    assert entry["outputs"]["responses"][2]["shape"] == [len(manifest["members"]), "batch", 150]
    files = sorted(p.name for p in tiny_behavior_artifact.iterdir() if p.name != "manifest.json")
    assert files == sorted(manifest["files"]) == ["gradient-90002-1-1.onnx", "responses-90002-1-1.onnx"]
    for name in files:
        assert manifest["files"][name]["bytes"] == (tiny_behavior_artifact / name).stat().st_size


def test_graphs_read_out_with_gathers_and_differentiate_folded_convs(tiny_artifact):
    for path in tiny_artifact.glob("*.onnx"):
        ops = [node.op_type for node in onnx.load(path).graph.node]
        assert "Gather" in ops and "GridSample" not in ops, (path.name, ops)
        gradient = path.name.startswith("gradient-")
        # narrow layers (< 16 channels, as here) differentiate through ConvTranspose
        assert ("ConvTranspose" in ops) == gradient and ("BatchNormalization" in ops) != gradient
    assert not list(tiny_artifact.glob("*.data"))  # weights inside the graphs


def test_wide_stride_one_layers_differentiate_as_conv_and_a_strided_one_as_conv_transpose(
    tiny_paths, tmp_path
):
    """Input gradients of stride-1 convolutions into >= 16 channels are Convs with flipped kernels (ONNX
    Runtime runs them far faster than ConvTranspose, depthwise above all); strided ones ConvTranspose."""
    base = get_config("cnn")
    core = replace(base.core, channels=16, layers=2, hidden_kernel=5, input_kernel=4, input_stride=2)
    run = tmp_path / "run"
    train_run(
        [tiny_paths["90001-1-1"]],
        replace(base, name="cnn-strided", core=core),
        run,
        config=FAST,
        progress=False,
    )
    out = export_run(run, tmp_path / "artifact")
    ops = [node.op_type for node in onnx.load(out / "gradient-90001-1-1.onnx").graph.node]
    forward = [node.op_type for node in onnx.load(out / "responses-90001-1-1.onnx").graph.node].count("Conv")
    # the strided input layer through ConvTranspose; every later (stride-1, 16-channel) layer as a Conv
    assert ops.count("ConvTranspose") == 1 and ops.count("Conv") == forward + (forward - 1)
    nets, pre = _torch_ensemble(run, "90001-1-1")
    for batch in (1, 4):
        x = _inputs(pre, batch, pre.image_size, batch)
        weights = np.random.default_rng(batch).normal(size=(batch, 150)).astype(np.float32)
        twin = artifact.load(out, threads=2).twin()
        _close(
            twin.gradient(x["images"], weights),
            _reference_gradient(nets, pre, "90001-1-1", x, weights),
            GRADIENT_RTOL,
        )


def test_a_core_with_divisive_normalization_exports_with_its_gradient(tiny_paths, tmp_path):
    """The normalization's squares, pooled convolutions and rsqrt, in the responses and the gradient."""
    base = get_config("twin")
    core = replace(base.core, channels=16, layers=2, normalization=True, normalization_kernel=5)
    run = tmp_path / "run"
    train_run([tiny_paths["90001-1-1"]], replace(base, core=core), run, config=FAST, progress=False)
    out = export_run(run, tmp_path / "artifact")
    ops = [node.op_type for node in onnx.load(out / "responses-90001-1-1.onnx").graph.node]
    assert "Sqrt" in ops or "Rsqrt" in ops or "Pow" in ops, ops
    nets, pre = _torch_ensemble(run, "90001-1-1")
    twin = artifact.load(out, threads=2).twin()
    for batch in (1, 4):
        x = _inputs(pre, batch, pre.image_size, batch)
        with torch.no_grad():
            images = torch.from_numpy(x["images"].astype(np.float32))
            expected = _reference(nets, pre, "90001-1-1", x, images).numpy()
        _close(twin.predict_members(x["images"]), expected)
        weights = np.random.default_rng(batch).normal(size=(batch, 150)).astype(np.float32)
        _close(
            twin.gradient(x["images"], weights),
            _reference_gradient(nets, pre, "90001-1-1", x, weights),
            GRADIENT_RTOL,
        )


def test_readout_position_offsets_export_with_their_gradient(tiny_paths, tmp_path):
    """Positions = the cortical map's + each neuron's offset: fixed at eval, constants in the graph."""
    base = get_config("twin")
    core = replace(base.core, channels=8, layers=2)
    model = replace(base, core=core, readout=replace(base.readout, offset_weight=1.0))
    run = tmp_path / "run"
    train_run([tiny_paths["90001-1-1"]], model, run, config=FAST, progress=False)
    nets, pre = _torch_ensemble(run, "90001-1-1")
    assert all(net.readouts["90001-1-1"].offset.abs().max() > 0 for net in nets)  # off the map
    out = export_run(run, tmp_path / "artifact")
    twin = artifact.load(out, threads=2).twin()
    x = _inputs(pre, 3, pre.image_size, 3)
    with torch.no_grad():
        images = torch.from_numpy(x["images"].astype(np.float32))
        expected = _reference(nets, pre, "90001-1-1", x, images).numpy()
    _close(twin.predict_members(x["images"]), expected)
    weights = np.random.default_rng(3).normal(size=(3, 150)).astype(np.float32)
    _close(
        twin.gradient(x["images"], weights),
        _reference_gradient(nets, pre, "90001-1-1", x, weights),
        GRADIENT_RTOL,
    )


def _fake_export_key(nets, key, pre, folder, opset):
    """Stands in for the slow ONNX export in tests of the folder handling."""
    files = {"responses": f"responses-{key}.onnx", "gradient": f"gradient-{key}.onnx"}
    for name in files.values():
        (folder / name).write_bytes(b"not a graph")
    return {"graphs": files, "inputs": {}, "outputs": {}}


def test_a_failed_export_leaves_nothing_behind(tiny_run, tmp_path, monkeypatch):
    calls = []

    def failing(nets, key, pre, folder, opset):
        calls.append(key)
        if len(calls) == 2:  # the first data key's files are written by now
            raise RuntimeError("export failed")
        return _fake_export_key(nets, key, pre, folder, opset)

    monkeypatch.setattr(export, "_export_key", failing)
    with pytest.raises(RuntimeError, match="export failed"):
        export.export_run(tiny_run, tmp_path / "artifact")
    assert calls == ["90001-1-1", "90002-1-1"]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_artifact_is_replaced_only_with_force(tiny_run, tiny_artifact, tmp_path, monkeypatch):
    with pytest.raises(InvalidInput, match=r"out: .* already exists"):
        export.export_run(tiny_run, tiny_artifact)
    result = CliRunner().invoke(cli, ["export", str(tiny_run), "--out", str(tiny_artifact)])
    assert result.exit_code == 2 and "already exists" in result.output
    target = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, target)
    monkeypatch.setattr(export, "_export_key", _fake_export_key)
    export.export_run(tiny_run, target, name="again", version=2, force=True)
    manifest = json.loads((target / "manifest.json").read_text())
    assert (manifest["name"], manifest["version"]) == ("again", 2)
    assert (target / "responses-90001-1-1.onnx").read_bytes() == b"not a graph"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary folders left
