"""Training on the tiny simulated mouse: it learns, a killed run resumes, bad input is refused early."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import processes_naming
from training.data import RecordingTensors, batches
from training.distributed import gpu_placement, run_launcher
from training.ensemble import greedy_select, mean_and_spread, pooled_correlation
from training.models import ModelConfig, RecordingShape, build, get_config
from training.run import evaluate, load_members, load_tensors, member_data, train_run
from training.trainer import EDGE_WARNING, TrainConfig, predict, train
from twin import metrics
from twin.data import load_recording, write_recording
from twin.errors import InvalidInput

FAST = TrainConfig(max_epochs=6, batch_size=64, patience=2, lr_decay_steps=2, seed=0)


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    """The baseline architecture, narrowed so a CPU trains it in seconds."""
    base = get_config("cnn")
    config = replace(base, name="cnn-small", core=replace(base.core, channels=8, layers=2, hidden_kernel=5))
    path = tmp_path_factory.mktemp("models") / "cnn-small.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


@pytest.fixture(scope="module")
def trained(tiny_paths, small_cnn, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "cnn"
    train_run([tiny_paths["90002-1-1"]], small_cnn, run, config=FAST, progress=False)
    return run


def epoch_log(folder: Path) -> list[dict]:
    """The per-epoch log the trainer wrote in `folder`."""
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def member_log(run: Path, member: int = 0) -> list[dict]:
    """A run's member's per-epoch log."""
    return epoch_log(run / "members" / f"member-{member}")


def trained_log(path: Path, model: Path, run: Path, config: TrainConfig) -> list[dict]:
    """Train a single model of `model` on the recording at `path` into `run`; its per-epoch log."""
    train_run([path], model, run, config=config, progress=False)
    return member_log(run)


def test_preprocessing_follows_the_reference(tiny_paths):
    rec = load_recording(tiny_paths["90002-1-1"], progress=False)
    d = RecordingTensors.from_recording(rec)
    std = rec.statistics["responses"]["all"]["std"]
    np.testing.assert_allclose(d.responses[:5].numpy(), rec.responses[:5] / std, rtol=1e-5)
    assert abs(float(d.images.mean())) < 0.2 and 0.8 < float(d.images.std()) < 1.2
    np.testing.assert_allclose(
        d.behavior[:5].numpy(), rec.behavior[:5] / rec.statistics["behavior"]["all"]["std"], rtol=1e-5
    )
    assert tuple(d.images.shape[-2:]) == (36, 64)


def test_moving_recording_tensors_leaves_the_original_where_it_was(tiny_paths):
    # train_run moves each member's data to the training device, then scores on the CPU copy.
    d = RecordingTensors.from_recording(load_recording(tiny_paths["90002-1-1"], progress=False))
    moved = d.to("meta")  # a device every machine has
    assert moved is not d and moved.images.device.type == "meta" and moved.responses.device.type == "meta"
    assert {t.device.type for t in (d.images, d.responses, d.behavior, d.pupil_center)} == {"cpu"}
    assert moved.data_key == d.data_key and moved.tiers is d.tiers


def test_one_batch_per_recording_per_step(tiny_paths):
    data = load_tensors(list(tiny_paths.values()))
    steps = list(batches(data, "train", 100, np.random.default_rng(0)))
    assert len(steps) == 8  # 720 train trials / 100, rounded up
    assert all([key for key, _ in step] == ["90001-1-1", "90002-1-1"] for step in steps)
    seen = np.concatenate([idx for step in steps for key, idx in step if key == "90001-1-1"])
    assert sorted(seen) == sorted(data["90001-1-1"].indices("train"))
    # Indices live where the data lives (one copy per epoch, none per step): here a device every
    # machine has, in batches of the same sizes.
    moved = {key: d.to("meta") for key, d in data.items()}
    on_device = list(batches(moved, "train", 100, np.random.default_rng(0)))
    assert {idx.device.type for step in on_device for _, idx in step} == {"meta"}
    assert [len(idx) for step in on_device for _, idx in step] == [
        len(idx) for step in steps for _, idx in step
    ]


def test_a_small_cnn_learns(trained, tiny_paths):
    summary = json.loads((trained / "metrics.json").read_text())
    _, nets = load_members(trained)
    d = load_tensors([tiny_paths["90002-1-1"]])["90002-1-1"]
    idx = d.indices("validation")
    prediction = predict(nets[0], d, idx)
    observed = metrics.correlation(d.responses[idx].numpy(), prediction).mean()
    assert observed == pytest.approx(summary["validation_correlation"]["members"]["member-0"], abs=1e-5)
    shuffled = metrics.correlation(
        d.responses[idx].numpy(), prediction[np.random.default_rng(0).permutation(len(idx))]
    )
    assert observed > 0.1 and observed > shuffled.mean() + 0.08
    log = member_log(trained)
    assert [e["epoch"] for e in log] == list(range(1, len(log) + 1))


def test_evaluate_scores_the_held_out_test_tier(trained, tiny_paths):
    scores = evaluate(trained, [tiny_paths["90002-1-1"]], "test")["90002-1-1"]
    assert scores["n_trials"] == 1000 and scores["members"] == 1
    assert 0.05 < scores["single_trial_correlation"] < scores["correlation_to_average"] < 1


def test_twin_evaluate_prints_the_three_metrics(trained, tiny_paths):
    from click.testing import CliRunner

    from twin.cli import cli

    data = str(tiny_paths["90002-1-1"])
    scores = evaluate(trained, [tiny_paths["90002-1-1"]], "test")["90002-1-1"]
    table = CliRunner().invoke(cli, ["evaluate", str(trained), "--data", data, "--tier", "test"])
    assert table.exit_code == 0, table.output
    header, row = table.output.strip().splitlines()
    assert header.split() == ["data", "key", "tier", "single-trial", "to", "average", "FEVE"]
    values = [f"{scores[k]:.3f}" for k in ("single_trial_correlation", "correlation_to_average", "feve")]
    assert row.split() == ["90002-1-1", "test", *values]
    as_json = CliRunner().invoke(cli, ["evaluate", str(trained), "--data", data, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["90002-1-1"] == pytest.approx(scores)
    refused = CliRunner().invoke(cli, ["evaluate", str(trained), "--data", data, "--tier", "train2"])
    assert refused.exit_code != 0 and "tier" in refused.output
    on_cpu = CliRunner().invoke(cli, ["evaluate", str(trained), "--data", data, "--json", "--device", "cpu"])
    assert on_cpu.exit_code == 0 and json.loads(on_cpu.output)["90002-1-1"] == pytest.approx(scores)
    for device in ("tpu", "cuda:x"):
        refused = CliRunner().invoke(cli, ["evaluate", str(trained), "--data", data, "--device", device])
        assert refused.exit_code == 2, refused.output
        assert f"device: {device!r}; expected cpu, cuda or cuda:<index>" in refused.output


def test_a_device_torch_cannot_use_is_refused_by_name():
    import torch

    from training.trainer import check_device

    assert check_device("cpu") == "cpu"
    for device in ("tpu", "cuda:", "cuda:-1", "gpu"):
        with pytest.raises(InvalidInput, match=r"expected cpu, cuda or cuda:<index>"):
            check_device(device)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        for device in ("cuda", "cuda:0"):
            with pytest.raises(InvalidInput, match="no CUDA device is visible to torch; expected cpu"):
                check_device(device)
    else:
        assert check_device("cuda:0") == "cuda:0"
        with pytest.raises(InvalidInput, match=f"expected cuda:0 to cuda:{count - 1}"):
            check_device(f"cuda:{count}")


def test_a_killed_training_run_resumes_where_it_stopped(tiny_paths, small_cnn, tmp_path):
    args = [
        sys.executable,
        "-m",
        "twin.cli",
        "train",
        "--data",
        str(tiny_paths["90002-1-1"]),
        "--model",
        str(small_cnn),
        "--epochs",
        "5",
        "--batch-size",
        "64",
        "--quiet",
    ]
    reference = subprocess.run([*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    log = tmp_path / "killed" / "members" / "member-0" / "log.jsonl"
    proc = subprocess.Popen(
        [*args, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [*args, "--out", str(tmp_path / "killed"), "--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr

    def history(run: Path) -> list[float]:
        return [e["validation_correlation"] for e in member_log(run)]

    assert len(history(tmp_path / "killed")) == 5
    np.testing.assert_allclose(history(tmp_path / "killed"), history(tmp_path / "whole"), rtol=1e-5)


def test_the_recipe_decays_the_lr_from_the_best_weights_then_stops(tiny_paths, small_cnn, tmp_path):
    """Patience 1, 2 decays, and a tolerance no epoch can beat: epoch 1 is the best, epochs 2 and 3 each
    decay the learning rate (x 0.3) and go back to epoch 1's weights, and training stops after epoch 3."""
    import torch

    config = replace(FAST, max_epochs=10, patience=1, lr_decay_steps=2, tolerance=10.0)
    log = trained_log(tiny_paths["90002-1-1"], small_cnn, tmp_path / "run", config)
    member = tmp_path / "run" / "members" / "member-0"
    assert [(e["epoch"], e["improved"], e.get("lr_decay")) for e in log] == [
        (1, True, None),
        (2, False, 1),
        (3, False, 2),
    ]
    assert [e["lr"] for e in log] == pytest.approx([0.009, 0.009, 0.009 * 0.3])
    best = torch.load(member / "best.pt", weights_only=False)
    last = torch.load(member / "checkpoint.pt", weights_only=False)
    assert best["epoch"] == 1 and last["state"]["epoch"] == 3
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.009 * 0.3 * 0.3)
    for name, value in best["model"].items():  # the last decay restored epoch 1's weights
        torch.testing.assert_close(last["model"][name], value, rtol=0, atol=0, msg=name)


def test_the_correlation_term_leaves_the_loss_after_its_rounds(tiny_paths, small_cnn, tmp_path):
    """correlation_rounds=1: Poisson + (1 - correlation) until the first learning-rate decay, then the
    Poisson loss alone; the same training as the term kept throughout up to there, a smaller loss after."""
    config = replace(
        FAST, max_epochs=10, patience=1, lr_decay_steps=3, tolerance=10.0, correlation_weight=1.0
    )
    logs = {}
    for rounds in (None, 1):
        run = tmp_path / f"rounds-{rounds}"
        logs[rounds] = trained_log(
            tiny_paths["90002-1-1"], small_cnn, run, replace(config, correlation_rounds=rounds)
        )
        assert json.loads((run / "run.json").read_text())["train"]["correlation_rounds"] == rounds
    assert [e.get("lr_decay") for e in logs[1]] == [None, 1, 2, 3]
    assert [e["correlation_weight"] for e in logs[None]] == [1.0, 1.0, 1.0, 1.0]
    assert [e["correlation_weight"] for e in logs[1]] == [1.0, 1.0, 0.0, 0.0]
    # Epochs 1-2 are the same training; epoch 3 starts from the same weights (epoch 1's, restored at the
    # decay) with the same batches, without the correlation term (> 1 per batch: see test_correlation_loss).
    assert [e["train_loss"] for e in logs[1][:2]] == [e["train_loss"] for e in logs[None][:2]]
    assert logs[1][2]["train_loss"] < logs[None][2]["train_loss"] - 1


def test_readout_positions_hold_still_through_their_warmup(tiny_paths, small_cnn, tmp_path, monkeypatch):
    """position_warmup=1: the first epoch trains all but the positions (here the map's MLP), the second
    moves them too; a resumed run holds or releases them by its epoch count, and the trained model comes
    back with every parameter trainable."""
    import torch

    base = ModelConfig.from_dict(json.loads(small_cnn.read_text()))
    config = replace(base, readout=replace(base.readout, position_warmup=1))
    data = load_tensors([tiny_paths["90002-1-1"]])
    ((key, d),) = data.items()

    def built() -> torch.nn.Module:
        torch.manual_seed(0)
        return build(config, {key: RecordingShape(d.n_neurons, d.coordinates, None)})

    net = built()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    positions = [k for k in start if k.startswith(f"readouts.{key}.mu_transform.")]
    assert len(positions) == 4  # the map's two linear layers
    run = tmp_path / "run"
    train(net, data, replace(FAST, max_epochs=1), run, progress=False)  # the best weights: epoch 1's
    after = net.state_dict()
    for k in positions:
        torch.testing.assert_close(after[k], start[k], rtol=0, atol=0, msg=k)
    for k in ("core.input_layer.0.weight", f"readouts.{key}.sigma", f"readouts.{key}.features"):
        assert not torch.equal(after[k], start[k]), k
    assert all(p.requires_grad for p in net.parameters())
    train(built(), data, replace(FAST, max_epochs=2), run, resume=True, progress=False)
    last = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    assert all(not torch.equal(last[k], start[k]) for k in positions)
    assert [e.get("positions_held") for e in epoch_log(run)] == [True, None]

    # interrupted during a held epoch, the model still comes back with every parameter trainable
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("training.trainer.validation_correlation", interrupted)
    net = built()
    with pytest.raises(KeyboardInterrupt):
        train(net, data, replace(FAST, max_epochs=1), tmp_path / "interrupted", progress=False)
    assert all(p.requires_grad for p in net.parameters())


def test_the_log_reports_positions_at_the_edge_and_warns_once_when_a_quarter_are_there(
    tiny_paths, small_cnn, tmp_path, caplog
):
    """Each epoch's log line has, per data key, the share of its readout's neurons at the feature map's
    edge: none for a readout started from the data, all for one whose map was pushed past the border
    (tanh saturated) and held there; the latter is warned about, naming the key, once per training."""
    import logging

    import torch

    base = ModelConfig.from_dict(json.loads(small_cnn.read_text()))
    data = load_tensors([tiny_paths["90002-1-1"]])
    ((key, d),) = data.items()

    def built(config: ModelConfig) -> torch.nn.Module:
        torch.manual_seed(0)
        return build(config, {key: RecordingShape(d.n_neurons, d.coordinates, None)})

    caplog.set_level(logging.WARNING, logger="training.trainer")
    train(built(base), data, replace(FAST, max_epochs=2), tmp_path / "inside", progress=False)
    assert [set(e["positions_at_edge"]) for e in epoch_log(tmp_path / "inside")] == [{key}, {key}]
    assert all(e["positions_at_edge"][key] < EDGE_WARNING for e in epoch_log(tmp_path / "inside"))
    assert "edge" not in caplog.text

    held = replace(base, readout=replace(base.readout, position_warmup=10))  # the map stays where it is put
    net = built(held)
    with torch.no_grad():
        net.readouts[key].mu_transform[2].bias.fill_(20.0)  # tanh(> 20) = 1: every neuron at the corner
    train(net, data, replace(FAST, max_epochs=2), tmp_path / "edge", progress=False)
    assert [e["positions_at_edge"] for e in epoch_log(tmp_path / "edge")] == [{key: 1.0}, {key: 1.0}]
    warnings = [r for r in caplog.records if "feature map's edge" in r.getMessage()]
    assert len(warnings) == 1 and key in warnings[0].getMessage() and "100%" in warnings[0].getMessage()


def test_position_lr_scale_gives_the_positions_their_own_learning_rate(tiny_paths, small_cnn, tmp_path):
    """position_lr_scale: the readout's position parameters (here the map's MLP) in their own Adam group
    at that multiple of the learning rate, every other parameter at the trainer's; one epoch moves them
    by at most a few of their (scaled) steps each, while a decay lowers both groups alike."""
    import torch

    from training.trainer import decay_learning_rates, parameter_groups

    base = ModelConfig.from_dict(json.loads(small_cnn.read_text()))
    config = replace(base, readout=replace(base.readout, position_lr_scale=1e-4))
    data = load_tensors([tiny_paths["90002-1-1"]])
    ((key, d),) = data.items()
    torch.manual_seed(0)
    net = build(config, {key: RecordingShape(d.n_neurons, d.coordinates, None)})
    groups = parameter_groups(net, 0.01)
    positions = net.readouts[key].position_parameters()
    assert [g.get("lr") for g in groups] == [None, pytest.approx(1e-6)] and groups[1]["lr_scale"] == 1e-4
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in positions]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in net.parameters())
    plain = build(base, {key: RecordingShape(d.n_neurons, d.coordinates, None)})
    assert len(parameter_groups(plain, 0.01)) == 1  # the baseline: one group, as before the option
    optimizer = torch.optim.Adam(parameter_groups(net, FAST.lr), lr=FAST.lr)
    decay_learning_rates(optimizer, FAST)
    rates = [FAST.lr * FAST.lr_decay_factor, FAST.lr * 1e-4 * FAST.lr_decay_factor]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(rates)
    for _ in range(20):  # down to the floor, each group its own
        decay_learning_rates(optimizer, FAST)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([FAST.min_lr, FAST.min_lr * 1e-4])

    start = {k: v.clone() for k, v in net.state_dict().items()}
    one = replace(FAST, max_epochs=1)
    train(net, data, one, tmp_path / "run", progress=False)
    steps = -(-len(d.indices("train")) // one.batch_size)
    after = net.state_dict()
    names = [k for k in start if k.startswith(f"readouts.{key}.mu_transform.")]
    # Adam's step is at most ~3 learning rates (its bias-corrected ratio); here they move 0.07-0.21 of
    # this bound, at the trainer's own rate (scale 1) 1,100-2,300 times it
    bound = 3 * steps * one.lr * 1e-4
    for k in names:
        moved = float((after[k] - start[k]).abs().max())
        assert 0 < moved <= bound, (k, moved, bound)
    core = "core.input_layer.0.weight"
    assert float((after[core] - start[core]).abs().max()) > bound
    assert epoch_log(tmp_path / "run")[0]["lr"] == one.lr  # the log reports the trainer's own rate
    # resumed, the checkpoint's optimizer loads into the same two groups and the scaled one stays scaled
    torch.manual_seed(0)
    again = build(config, {key: RecordingShape(d.n_neurons, d.coordinates, None)})
    train(again, data, replace(FAST, max_epochs=2), tmp_path / "run", resume=True, progress=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    assert [(g["lr"], g.get("lr_scale")) for g in saved] == [
        (one.lr, None),
        (pytest.approx(one.lr * 1e-4), 1e-4),
    ]
    assert len(epoch_log(tmp_path / "run")) == 2


def test_resume_refuses_other_settings_and_allows_where_and_how_long(tiny_paths, small_cnn, tmp_path):
    one_epoch = replace(FAST, max_epochs=1)
    paths = [tiny_paths["90002-1-1"]]
    train_run(paths, small_cnn, tmp_path / "run", config=one_epoch, progress=False)
    member = tmp_path / "run" / "members" / "member-0"
    before = (member / "checkpoint.pt").read_bytes()
    refused = [
        ({"config": replace(one_epoch, lr=0.001)}, r"train\.lr: was 0\.009, now 0\.001"),
        (
            {"config": replace(one_epoch, correlation_weight=1.0)},
            r"train\.correlation_weight: was 0\.0, now 1\.0",
        ),
        ({"members": 2}, "members: was 1, now 2"),
        ({"model": "cnn_behavior"}, r"model\.core\.in_channels: was 1, now 4"),
        ({"paths": [*paths, tiny_paths["90001-1-1"]]}, r"data keys: was \['90002-1-1'\]"),
    ]
    for change, message in refused:
        model = change.get("model", small_cnn)
        kwargs = {"config": one_epoch, "members": 1} | {
            k: v for k, v in change.items() if k in ("config", "members")
        }
        with pytest.raises(InvalidInput, match=f"resume: .* was started with other settings .*{message}"):
            train_run(
                change.get("paths", paths), model, tmp_path / "run", resume=True, progress=False, **kwargs
            )
    assert (member / "checkpoint.pt").read_bytes() == before  # refused before anything was touched
    # where it runs and how long it may go on can change: 1 more epoch from the checkpoint
    train_run(
        paths,
        small_cnn,
        tmp_path / "run",
        config=replace(one_epoch, max_epochs=2),
        resume=True,
        progress=False,
    )
    assert len((member / "log.jsonl").read_text().splitlines()) == 2


def test_bad_input_is_refused_before_training(tiny_paths, small_cnn, tmp_path):
    with pytest.raises(InvalidInput, match="zeroed"):
        train_run([tiny_paths["90001-1-1"]], "cnn_behavior", tmp_path / "a", config=FAST, progress=False)
    with pytest.raises(InvalidInput, match=r"model: 'resnet-9000'.*cnn"):
        train_run([tiny_paths["90002-1-1"]], "resnet-9000", tmp_path / "b", config=FAST, progress=False)
    rec = load_recording(tiny_paths["90002-1-1"], progress=False)
    no_validation = write_recording(
        rec.subset(rec.tier_indices("train")[:50]), tmp_path / "static1-1-1-X", progress=False
    )
    with pytest.raises(InvalidInput, match="no 'validation' trials"):
        train_run([no_validation], small_cnn, tmp_path / "c", config=FAST, progress=False)
    idx = np.concatenate([rec.tier_indices(t)[:20] for t in ("train", "validation")])
    part = rec.subset(idx)
    big = replace(part, data_key="2-2-2", images=np.repeat(np.repeat(part.images, 4, axis=2), 4, axis=3))
    big_path = write_recording(big, tmp_path / "static2-2-2-X", progress=False)
    with pytest.raises(InvalidInput, match="different image sizes"):
        train_run([tiny_paths["90002-1-1"], big_path], small_cnn, tmp_path / "d", config=FAST, progress=False)
    with pytest.raises(InvalidInput, match="batch_size"):
        TrainConfig(batch_size=0)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("lr", float("inf"), r"lr: inf; expected a number in \(0\.0, inf\)"),
        ("lr", 0, r"lr: 0; expected a number in \(0\.0, inf\)"),
        ("lr", float("nan"), r"lr: nan"),
        ("lr", "0.01", r"lr: '0\.01'; expected a number"),
        ("min_lr", float("inf"), r"min_lr: inf; expected a number in \(0\.0, inf\)"),
        ("lr_decay_factor", float("inf"), r"lr_decay_factor: inf; expected a number in \(0\.0, 1\.0\]"),
        ("lr_decay_factor", 3.0, r"lr_decay_factor: 3\.0; expected a number in \(0\.0, 1\.0\]"),
        ("tolerance", float("inf"), r"tolerance: inf; expected a number in \[0\.0, inf\)"),
        ("tolerance", -1e-3, r"tolerance: -0\.001; expected a number in \[0\.0, inf\)"),
        ("correlation_weight", float("inf"), r"correlation_weight: inf; expected a number in \[0\.0, inf\)"),
        ("patience", True, r"patience: True; expected an integer >= 1"),
        ("max_epochs", 2.5, r"max_epochs: 2\.5; expected an integer >= 1"),
    ],
)
def test_train_config_refuses_non_finite_and_out_of_range_numbers_naming_the_field(field, value, expected):
    """An infinite rate is an infinite step and an infinite tolerance an epoch that never improves: both
    refused before any training, as are a 'decay' that raises the rate and counts that are not integers."""
    with pytest.raises(InvalidInput, match=expected):
        TrainConfig(**{field: value})


def test_train_config_keeps_its_accepted_values_and_stores_numbers_as_floats():
    config = TrainConfig(lr=1, min_lr=1e-5, lr_decay_factor=1, tolerance=0, correlation_weight=0)
    numbers = (config.lr, config.lr_decay_factor, config.tolerance, config.correlation_weight)
    assert numbers == (1.0, 1.0, 0.0, 0.0) and all(type(v) is float for v in numbers)
    assert TrainConfig().correlation_weight is None and TrainConfig() == TrainConfig(lr=0.009)


def test_cli_unknown_model_exits_2(tiny_paths, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twin.cli",
            "train",
            "--data",
            str(tiny_paths["90002-1-1"]),
            "--model",
            "nope",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: model: 'nope'") and "cnn" in result.stderr


def test_training_writes_curves_and_test_metrics(trained):
    member = trained / "members" / "member-0"
    assert (member / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((trained / "metrics.json").read_text())
    assert summary["selected"] == ["member-0"]
    test = summary["test"]["90002-1-1"]  # scored from the held-out responses beside the recording
    assert test["ensemble"]["n_trials"] == 1000 and test["ensemble"]["single_trial_correlation"] > 0.05


def test_an_ensemble_in_two_processes(tiny_paths, small_cnn, tmp_path):
    """--nproc 2 runs torchrun with gloo; members differ in seed and split; rank 0 selects and scores."""
    run = tmp_path / "ensemble"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twin.cli",
            "train",
            "--data",
            str(tiny_paths["90002-1-1"]),
            "--model",
            str(small_cnn),
            "--members",
            "2",
            "--nproc",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ensemble of member-" in result.stdout
    summary = json.loads((run / "metrics.json").read_text())
    members = summary["validation_correlation"]["members"]
    assert set(members) == {"member-0", "member-1"} and members["member-0"] != members["member-1"]
    assert summary["validation_correlation"]["ensemble"] >= max(members[m] for m in summary["selected"][:1])
    scores = evaluate(run, [tiny_paths["90002-1-1"]], "test")["90002-1-1"]
    assert scores["members"] == len(summary["selected"])
    assert (scores["mean_member_std"] > 0) == (len(summary["selected"]) > 1)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_a_parallel_training_run_stops_its_workers(tiny_paths, small_cnn, tmp_path, sig):
    """torchrun's workers run in their own sessions: `twin train --nproc` passes the signal on and waits."""
    run = tmp_path / "stopped"
    args = [sys.executable, "-m", "twin.cli", "train", "--data", str(tiny_paths["90002-1-1"])]
    args += ["--model", str(small_cnn), "--members", "2", "--nproc", "2", "--epochs", "200"]
    args += ["--batch-size", "64", "--out", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    logs = [run / "members" / f"member-{i}" / "log.jsonl" for i in range(2)]
    deadline = time.monotonic() + 300
    while not all(log.is_file() and log.read_text().strip() for log in logs):  # both workers training
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    workers = [pid for pid in processes_naming(str(run)) if pid != proc.pid]
    assert len(workers) >= 2  # the launcher and its two workers
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # stopped, not finished
    deadline = time.monotonic() + 60
    while processes_naming(str(run)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_naming(str(run)) == []
    # What was written stays: each member's checkpoints and log, so --resume can continue.
    assert all(log.read_text().strip() for log in logs)


def test_ranks_spread_over_the_gpus_and_share_them_through_gloo():
    # One GPU per rank: NCCL; more ranks than GPUs (5 members on one GPU): round robin, gloo barrier.
    assert gpu_placement("cuda", 1, 2, 2) == ("cuda:1", "nccl")
    assert [gpu_placement("cuda", r, 5, 2) for r in range(5)] == [
        ("cuda:0", "gloo"),
        ("cuda:1", "gloo"),
        ("cuda:0", "gloo"),
        ("cuda:1", "gloo"),
        ("cuda:0", "gloo"),
    ]
    assert gpu_placement("cuda:1", 0, 1, 4) == ("cuda:1", "nccl")
    assert gpu_placement("cuda:1", 3, 4, 4) == ("cuda:1", "gloo")  # every rank on the GPU named
    with pytest.raises(InvalidInput, match="no CUDA device"):
        gpu_placement("cuda", 0, 2, 0)


def test_members_of_an_ensemble_keep_the_validation_tier_for_selection(tiny_paths):
    data = load_tensors([tiny_paths["90002-1-1"]])
    original = data["90002-1-1"].tiers
    splits = [member_data(data, i, 3, seed=0)["90002-1-1"].tiers for i in range(3)]
    for tiers in splits:
        assert np.array_equal(tiers == "selection", original == "validation")
        assert (tiers == "validation").sum() == (original == "validation").sum()
        assert not np.any((tiers == "validation") & (original != "train"))
    assert not np.array_equal(splits[0] == "validation", splits[1] == "validation")
    assert member_data(data, 0, 1, seed=0) is data  # a single model follows the reference recipe


def test_greedy_selection_and_spread():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(200, 5))
    responses = {"a": truth + rng.normal(size=truth.shape)}
    good = [{"a": truth + 0.5 * rng.normal(size=truth.shape)} for _ in range(3)]
    bad = {"a": rng.normal(size=truth.shape)}
    chosen, path = greedy_select([bad, *good], responses)
    assert 0 not in chosen and len(chosen) >= 2
    assert all(b > a for a, b in itertools.pairwise(path))
    _mean, spread = mean_and_spread([good[0]["a"], good[0]["a"]])
    np.testing.assert_array_equal(spread, 0)


def test_an_ensemble_of_one_member_scores_exactly_what_the_member_scores():
    """Members' float32 predictions, Fortran-ordered as `predict` returns them: the selected ensemble's
    score is never below its first member's, not even in the last bit."""
    rng = np.random.default_rng(1)
    responses = {"a": rng.normal(size=(80, 150)).astype(np.float32)}
    for _ in range(20):
        members = [
            {"a": np.asfortranarray(responses["a"] + 3 * rng.normal(size=(80, 150)), np.float32)}
            for _ in range(2)
        ]
        chosen, path = greedy_select(members, responses)
        assert path[0] == pooled_correlation(responses, members[chosen[0]])
        assert path[-1] >= max(pooled_correlation(responses, m) for m in members)


def test_correlation_loss():
    import torch

    from training.trainer import correlation_loss

    x = torch.randn(64, 4)
    assert float(correlation_loss(2 * x + 1, x)) == pytest.approx(0, abs=1e-4)
    assert float(correlation_loss(-x, x)) == pytest.approx(2 * 4 * 64, rel=1e-4)
    with pytest.raises(InvalidInput, match="device"):
        TrainConfig(device="tpu")


def test_channels_last_trains_the_same_model(tiny_paths, small_cnn, tmp_path):
    """NHWC only reorders memory: two epochs give the same validation curve as NCHW (to summation order)."""
    config = replace(FAST, max_epochs=2)
    curves = {}
    for layout in (True, False):
        run = tmp_path / f"channels-last-{layout}"
        log = trained_log(tiny_paths["90001-1-1"], small_cnn, run, replace(config, channels_last=layout))
        curves[layout] = [e["validation_correlation"] for e in log]
    assert len(curves[True]) == 2
    np.testing.assert_allclose(curves[True], curves[False], atol=2e-3)


def test_fine_tuning_starts_from_a_pretrained_shared_core(tiny_paths, small_cnn, tmp_path):
    """Pre-train one core on both recordings, fine-tune on one: the first epoch already beats scratch."""
    config = replace(FAST, max_epochs=1)
    pretrained = tmp_path / "pretrained"
    # 12 epochs: after only 3 the head start was 0.008-0.024, whether it showed hung on float rounding
    train_run(
        list(tiny_paths.values()), small_cnn, pretrained, config=replace(FAST, max_epochs=12), progress=False
    )
    first_epoch = {}
    for name, init_from in (("scratch", None), ("fine-tuned", pretrained)):
        run = tmp_path / name
        train_run(
            [tiny_paths["90001-1-1"]], small_cnn, run, config=config, progress=False, init_from=init_from
        )
        first_epoch[name] = member_log(run)[0]["validation_correlation"]
    start = json.loads((tmp_path / "fine-tuned" / "members" / "member-0" / "training.json").read_text())[
        "start"
    ]
    assert start["member"] == "member-0" and start["fresh"] == []  # core and readout of 90001-1-1 both fit
    assert first_epoch["fine-tuned"] > first_epoch["scratch"] + 0.05

    wider = tmp_path / "wider.json"
    config_dict = json.loads(small_cnn.read_text())
    config_dict["core"]["channels"] = 12
    wider.write_text(json.dumps(config_dict))
    with pytest.raises(InvalidInput, match="init_from: the pretrained core does not fit"):
        train_run([tiny_paths["90001-1-1"]], wider, tmp_path / "bad", config=config, init_from=pretrained)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper: Linux only")
def test_the_launcher_stops_what_its_launcher_left_behind(tmp_path):
    # A launcher that starts a worker in a session of its own and exits without it, as torchrun can.
    mark = str(tmp_path / "orphan-worker")
    worker = f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)  # {mark}"
    launcher = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True); time.sleep(0.5)"
    )
    started = time.monotonic()
    assert run_launcher([sys.executable, "-c", launcher]) == 0
    assert processes_naming(mark) == []  # ignored SIGTERM: killed after the grace period
    assert time.monotonic() - started < 60
    # and this process is a subreaper no longer: later orphans are not ours to collect
    flag = ctypes.c_int(-1)
    assert ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value == 0  # GET
