"""bench/readout_form.py: a trained run's readout trained again on its frozen core, in several forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_refused, bench_module, run_main
from training.run import load_members, load_tensors

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "readout_form.py"
KEY = "90001-1-1"


def test_every_form_starts_as_the_trained_readout(tiny_run, tiny_paths):
    bench = bench_module("readout_form")
    description, (net,) = load_members(tiny_run)
    d = load_tensors([tiny_paths[KEY]], resize=net.config.input_resize)[KEY]
    with torch.no_grad():
        layers = net.core.layer_outputs(net.inputs(d.images[:16]))
        assert torch.equal(layers[-1], net.core(net.inputs(d.images[:16])))  # forward is the last layer
        every = torch.cat(layers, 1)  # (16, 2 layers x 8 channels, H', W')
        trained = F.elu(net.readouts[KEY](layers[-1])) + 1
        assert torch.allclose(trained, net(d.images[:16], KEY), atol=1e-6)
        for form in bench.FORMS:
            model = bench.build_form(
                form, net.readouts[KEY], description["coordinates"][KEY], every.shape[1:]
            )
            expected = trained
            if form == "divisive":  # a constant gain at the start: the same correlations
                expected = trained / (1 + F.softplus(torch.tensor(-4.0)))
            if form == "output":  # + 0.0025 of each compressive term
                expected = trained + sum(
                    F.softplus(torch.tensor(-6.0)) * t * torch.log1p(trained / t) for t in bench.TAUS
                )
            assert torch.allclose(model(every, False), expected, rtol=1e-5, atol=1e-6), form
            # `free`: the trained positions, each neuron's own parameter now (no cortical map)
            assert (model.readout.mu_transform is None) == (form == "free"), form
    # the output nonlinearity is monotone and stays so however it is trained
    output = bench._modules()[2](3)
    with torch.no_grad():
        output.theta.copy_(torch.randn(output.theta.shape) * 3)
        y = torch.linspace(0, 20, 200)[:, None].expand(-1, 3)
        assert torch.all(torch.diff(output(y), dim=0) > 0)


def test_the_bench_retrains_each_form_and_scores_it_against_the_truth(
    tiny_run, tiny_paths, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "readout_form.json"
    args = ["--run", str(tiny_run), "--data", str(tiny_paths[KEY]), "--epochs", "2", "--out", str(out)]
    code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "readout_form" and result["data_key"] == KEY and result["epochs"] == 2
    assert result["model"] == "cnn-tiny" and result["member_training"]["epochs"] == 1
    assert result["features"][0] == 16  # both layers' 8 channels, for the `layers` form
    assert result["trials"] == {"train": 720, "validation": 80, "test": 1000}
    assert list(result["forms"]) == ["as trained", "output", "divisive", "layers", "free"]
    assert result["targets"] == "responses"
    for form, scores in result["forms"].items():
        for metric in ("validation_correlation", "single_trial_correlation", "correlation_to_average"):
            assert -1 <= scores[metric] <= 1, (form, metric)
        # the simulation was found beside the recording: the noise-free truth scores each form
        assert -1 <= scores["correlation_with_truth"] <= 1
    assert "correlation_with_truth" in json.dumps(result) and "machine" in result
    assert np.isfinite([s["correlation_to_average"] for s in result["forms"].values()]).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--forms", "as trained,mlp"], "--forms: 'as trained,mlp'; expected distinct names"),
        (["--forms", "output,output"], "expected distinct names"),
        (["--epochs", "0"], "--epochs: 0; expected >= 1"),
        (["--lr", "0"], "--lr: 0.0; expected > 0"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    tiny_run, tiny_paths, tmp_path, monkeypatch, capsys, extra, message
):
    args = ["--run", str(tiny_run), "--data", str(tiny_paths[KEY]), "--out", str(tmp_path / "r.json"), *extra]
    assert_refused(SCRIPT, args, message, tmp_path, monkeypatch, capsys)


def test_a_folder_that_is_not_a_run_is_refused(tiny_paths, tmp_path, monkeypatch, capsys):
    args = ["--run", str(tmp_path), "--data", str(tiny_paths[KEY]), "--out", str(tmp_path / "r.json")]
    assert_refused(SCRIPT, args, "is not a training run (no run.json)", tmp_path, monkeypatch, capsys)


def test_truth_targets_train_and_select_on_the_noise_free_responses(
    tiny_run, tiny_paths, tmp_path, monkeypatch, capsys
):
    scores = {}
    for targets in ("responses", "truth"):
        out = tmp_path / f"{targets}.json"
        args = ["--run", str(tiny_run), "--data", str(tiny_paths[KEY]), "--forms", "as trained,free"]
        args += ["--epochs", "2", "--targets", targets, "--out", str(out)]
        code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
        assert code == 0, stderr[-2000:]
        result = json.loads(out.read_text())
        assert result["targets"] == targets and list(result["forms"]) == ["as trained", "free"]
        scores[targets] = result["forms"]
    for form in ("as trained", "free"):
        # validation is scored against what was fitted: the truth has no trial noise to cap it (a
        # single trial of `tiny` correlates about 0.45 with its own truth), so the same features
        # correlate far better with it than with the recorded responses
        truth, recorded = (scores[t][form]["validation_correlation"] for t in ("truth", "responses"))
        assert truth > 1.3 * recorded > 0, (form, truth, recorded)
        # in the recorded responses' units (standardized per neuron): fitted to the raw truth instead, the
        # predictions' scale is off and FEVE, which scale changes, falls below the recorded fit's
        assert scores["truth"][form]["feve"] > scores["responses"][form]["feve"], form
        assert -1 <= scores["truth"][form]["correlation_with_truth"] <= 1


def test_truth_targets_without_a_simulation_are_refused(tiny_paths, tiny_run, tmp_path, monkeypatch, capsys):
    alone = tmp_path / "alone" / tiny_paths[KEY].name  # the recording with no ground truth beside it
    alone.parent.mkdir()
    alone.symlink_to(tiny_paths[KEY], target_is_directory=True)
    out = tmp_path / "out"
    out.mkdir()
    args = ["--run", str(tiny_run), "--data", str(alone), "--targets", "truth", "--out", str(out / "r.json")]
    message = "--targets truth: no simulation found beside --data"
    assert_refused(SCRIPT, args, message, out, monkeypatch, capsys)


def test_every_form_starts_as_a_readout_trained_with_free_positions():
    from training.models.config import ReadoutConfig
    from training.models.readout import GaussianReadout

    bench = bench_module("readout_form")
    torch.manual_seed(0)
    trained = GaussianReadout((8, 6, 10), None, ReadoutConfig(use_coordinates=False), n_neurons=5).eval()
    features = torch.randn(3, 8, 6, 10)
    expected = F.elu(trained(features)) + 1
    for form in ("as trained", "output", "free"):  # no map to rebuild: the positions are taken as they are
        model = bench.build_form(form, trained, np.zeros((5, 3)), features.shape[1:])
        assert model.readout.mu_transform is None, form
        got = model(features, False)
        if form == "output":
            got = got - sum(
                F.softplus(torch.tensor(-6.0)) * t * torch.log1p(expected / t) for t in bench.TAUS
            )
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), form


def test_every_form_starts_as_a_readout_trained_with_position_offsets():
    from training.models.config import ReadoutConfig
    from training.models.readout import GaussianReadout

    bench = bench_module("readout_form")
    torch.manual_seed(0)
    coordinates = np.random.default_rng(0).normal(size=(5, 3))
    trained = GaussianReadout((8, 6, 10), coordinates, ReadoutConfig(offset_weight=1.0)).eval()
    with torch.no_grad():
        trained.offset.uniform_(-0.3, 0.3)  # off the map: a form that dropped them would read elsewhere
    features = torch.randn(3, 8, 6, 10)
    expected = F.elu(trained(features)) + 1
    for form in ("as trained", "free", "divisive"):
        model = bench.build_form(form, trained, coordinates, features.shape[1:])
        assert (model.readout.offset is None) == (form == "free"), form  # free: the positions as they are
        got = model(features, False)
        if form == "divisive":
            got = got * (1 + F.softplus(torch.tensor(-4.0)))
        torch.testing.assert_close(model.readout.mu(), trained.mu(), msg=form)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), form
