"""bench/core_form.py: variants of a model's core trained alike on one recording and scored."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import alive, assert_refused, bench_module, run_main
from training.models.core import DivisiveNormalization
from training.run import load_members
from training.trainer import EDGE_WARNING
from twin.errors import InvalidInput

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "core_form.py"
KEY = "90001-1-1"
# Five epochs of a narrow model on `tiny` are at the edge of learning. On 90001 whether they learn hung
# on the CPU's vector kernels (AVX2: 0.22 with the truth; AVX-512: -0.01, from different float rounding
# in the first steps); on 90002 they learned under both (0.28-0.31, either normalization).
LEARNS = "90002-1-1"
NARROW = "twin:channels=8,layers=2,normalization=false"


def test_variants_train_alike_are_scored_against_the_truth_and_reused(
    tiny_paths, tmp_path, monkeypatch, capsys
):
    out, work = tmp_path / "core_form.json", tmp_path / "work"
    variants = [NARROW, NARROW.replace("normalization=false", "normalization=true,normalization_kernel=5")]
    args = ["--data", str(tiny_paths[LEARNS]), "--epochs", "5", "--jobs", "2", "--work", str(work)]
    args += [a for v in variants for a in ("--variant", v)] + ["--out", str(out)]
    code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "core_form" and result["data_key"] == LEARNS and result["epochs"] == 5
    assert list(result["variants"]) == variants and result["seeds"] == [0]
    runs = []
    for spec, variant in result["variants"].items():
        cell = variant["seeds"]["0"]
        assert "error" not in cell, cell
        assert variant["model"]["core"]["channels"] == 8
        assert variant["model"]["core"]["normalization"] == ("normalization=true" in spec)
        assert 1 <= cell["epochs"][0] <= 5 and 1 <= cell["best_epoch"] <= cell["epochs"][0]
        # how it learnt, epoch by epoch, from its log: the best epoch's is the run's validation score
        (curve,) = cell["validation_curves"]
        assert len(curve) == cell["epochs"][0] and cell["positions_held"] == [0]
        # readouts started from the data: positions inside the feature map, not run off to its edge
        (edge,) = cell["positions_at_edge"]
        assert list(edge) == [LEARNS] and 0 <= edge[LEARNS] < EDGE_WARNING
        assert curve[cell["best_epoch"] - 1] == pytest.approx(cell["validation_correlation"], abs=2e-4)
        for name in ("single_trial_correlation", "correlation_to_average", "validation_correlation"):
            assert -1 <= cell[name] <= 1, (name, cell[name])
        # the predictions of the test images line up with their true responses: a model trained 5 epochs
        # correlates 0.28-0.31 with them; misaligned, the mean over 150 neurons would be 0 +- 0.01
        assert 0.05 < cell["correlation_with_truth"] <= 1, cell["correlation_with_truth"]
        # by quarters of the neurons (by SNR): they average to the whole, and the noisiest quarter is the
        # one learned worst, well below the others (5 epochs: 0.23 vs 0.30-0.34 on an AMD EPYC, 0.22 vs
        # 0.27-0.31 on an Intel Xeon: the float trajectory differs between CPU kinds)
        quartiles = cell["correlation_with_truth_by_snr_quartile"]
        assert np.mean(quartiles) == pytest.approx(cell["correlation_with_truth"], abs=0.01)
        assert quartiles[0] == min(quartiles) and np.mean(quartiles[1:]) > quartiles[0] + 0.03, quartiles
        edges = cell["snr_quartile_edges"]
        assert len(edges) == 5 and 0 < edges[0] < edges[2] < edges[4], edges
        assert cell["run"]["reused"] is False
        runs.append(work / "runs" / cell["run"]["name"])
    # the variant's core is what trained: the normalization in its first layer, and more parameters
    normalized = [isinstance(m, DivisiveNormalization) for m in load_members(runs[1])[1][0].modules()]
    plain = [isinstance(m, DivisiveNormalization) for m in load_members(runs[0])[1][0].modules()]
    assert any(normalized) and not any(plain)
    first, second = (result["variants"][v]["seeds"]["0"]["core_parameters"] for v in variants)
    assert second > first

    # the same call again finds both runs trained and scores them the same
    code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    again = json.loads(out.read_text())
    for spec in variants:
        before, after = result["variants"][spec]["seeds"]["0"], again["variants"][spec]["seeds"]["0"]
        assert after["run"]["reused"] is True
        assert {k: v for k, v in after.items() if k != "run"} == {
            k: v for k, v in before.items() if k != "run"
        }

    # A run stored before a config field existed had another name (the name digests every field): its
    # run.json, without the field, is the same training, so the bench reuses it where it lies.
    spec = variants[0]
    earlier = runs[0].with_name(f"{runs[0].name.rsplit('-', 1)[0]}-000000000000")
    runs[0].rename(earlier)
    stored = json.loads((earlier / "run.json").read_text())
    del stored["model"]["correlation_rounds"], stored["train"]["correlation_rounds"]
    (earlier / "run.json").write_text(json.dumps(stored))
    # Beside it, a copy that trained at another learning rate is not the same training.
    other = earlier.with_name(f"{earlier.name[:-1]}1")
    other.mkdir()
    (other / "run.json").write_text(json.dumps({**stored, "train": {**stored["train"], "lr": 0.5}}))
    code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    found = json.loads(out.read_text())["variants"][spec]["seeds"]["0"]
    assert found["run"] == {"name": earlier.name, "reused": True, "continued": False}
    assert found["correlation_to_average"] == result["variants"][spec]["seeds"]["0"]["correlation_to_average"]
    accuracy = bench_module("accuracy")
    model = bench_module("core_form").variant_config(spec)
    training = accuracy._training(model, [tiny_paths[LEARNS]], 1, accuracy.TrainConfig(max_epochs=5), None)
    assert accuracy.stored_alike(work / "runs", model, 1, training) == earlier
    (earlier / "run.json").unlink()
    assert accuracy.stored_alike(work / "runs", model, 1, training) is None


def test_truth_targets_train_on_a_copy_that_holds_the_noise_free_responses(
    tiny_paths, tiny_sim, tmp_path, monkeypatch, capsys
):
    """--targets truth: the variant trains on a copy of the recording whose responses are the neurons'
    noise-free responses to each trial's image; scored on that copy, single-trial correlation, correlation
    to average and correlation with the truth are one number."""
    from twin.data import load_recording
    from twin.data.simulation import GroundTruth

    out, work = tmp_path / "core_form.json", tmp_path / "work"
    args = ["--data", str(tiny_paths[LEARNS]), "--epochs", "3", "--variant", NARROW, "--targets", "truth"]
    args += ["--work", str(work), "--out", str(out)]
    code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["targets"] == "truth" and result["data_key"] == LEARNS
    cell = result["variants"][NARROW]["seeds"]["0"]
    assert "error" not in cell, cell
    rho = cell["correlation_with_truth"]
    assert 0.05 < rho <= 1, rho
    assert cell["single_trial_correlation"] == pytest.approx(rho, abs=1e-4)
    assert cell["correlation_to_average"] == pytest.approx(rho, abs=1e-4)

    original = load_recording(tiny_paths[LEARNS], progress=False)
    copy_path = work / "truth" / tiny_paths[LEARNS].name
    copy = load_recording(copy_path, progress=False)
    assert copy.data_key == original.data_key
    np.testing.assert_array_equal(copy.images, original.images)
    np.testing.assert_array_equal(copy.tiers, original.tiers)
    np.testing.assert_array_equal(copy.behavior, original.behavior)
    truth = GroundTruth.load(tiny_sim, LEARNS)(np.asarray(original.images))
    np.testing.assert_allclose(copy.responses, truth, rtol=1e-5, atol=1e-6)
    assert not np.allclose(copy.responses, original.responses)  # the recorded trials are noisy
    # its statistics are its own (the trainer standardizes responses by them)
    std = copy.statistics["responses"]["all"]["std"]
    np.testing.assert_allclose(std, truth.std(0), rtol=1e-4)

    # a second call reuses the copy as written and the run trained on it
    written = (copy_path / "meta" / "statistics" / "responses" / "all" / "std.npy").stat().st_mtime_ns
    code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    again = json.loads(out.read_text())["variants"][NARROW]["seeds"]["0"]
    assert again["run"]["reused"] is True and again["correlation_with_truth"] == rho
    assert (copy_path / "meta" / "statistics" / "responses" / "all" / "std.npy").stat().st_mtime_ns == written


def test_truth_targets_without_the_simulation_are_refused(tiny_paths, tmp_path, monkeypatch, capsys):
    """A recording with no ground_truth/ beside it and no --simulation: nothing to train on."""
    alone, scratch = tmp_path / "alone", tmp_path / "scratch"
    alone.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    (alone / tiny_paths[KEY].name).symlink_to(tiny_paths[KEY], target_is_directory=True)
    args = ["--data", str(alone / tiny_paths[KEY].name), "--targets", "truth"]
    args += ["--out", str(scratch / "core_form.json")]
    message = "--targets truth: no simulation found beside --data; expected --simulation DIR"
    assert_refused(SCRIPT, args, message, scratch, monkeypatch, capsys)


def test_truth_targets_from_another_simulation_are_refused(
    tiny_paths, tiny_sim, tmp_path, monkeypatch, capsys
):
    """--simulation whose neurons for the recording's key are not the recording's (another preset writes
    the same keys), or that has no ground truth for the key: refused by name, nothing trained or written."""
    from twin.data.simulation import GroundTruth

    other = tmp_path / "other" / "ground_truth" / KEY
    other.mkdir(parents=True)
    (other / "ground_truth.json").write_bytes(
        (tiny_sim / "ground_truth" / KEY / "ground_truth.json").read_bytes()
    )
    GroundTruth.load(tiny_sim, KEY).population.subset(np.arange(100)).save(other / "population.npz")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    args = ["--data", str(tiny_paths[KEY]), "--targets", "truth", "--simulation", str(tmp_path / "other")]
    args += ["--out", str(scratch / "core_form.json")]
    message = "--simulation: 100 neurons for 90001-1-1; the recording has 150: expected the simulation"
    assert_refused(SCRIPT, args, message, scratch, monkeypatch, capsys)
    shutil.rmtree(other)
    other.mkdir()
    assert_refused(
        SCRIPT, args, "--simulation: data_key: no ground truth for '90001-1-1'", scratch, monkeypatch, capsys
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "densenet"], "--variant: 'densenet'"),
        (["--variant", "twin_behavior"], "uses behaviour; expected an image-only model"),
        (["--variant", "twin:width=3"], "expected FIELD=VALUE with FIELD one of"),
        (["--variant", "twin:normalization_kernel=4"], "normalization_kernel: 4; expected an odd size"),
        (["--variant", "twin", "--variant", "twin"], "expected distinct variants"),
        (["--variant", "missing.json"], "--variant: 'missing.json': cannot read a model configuration"),
        (["--seeds", "0,x"], "--seeds: '0,x'"),
        (["--epochs", "0"], "--epochs: 0; expected >= 1"),
        (["--jobs", "0"], "--jobs: 0; expected >= 1"),
    ],
)
def test_bad_options_are_refused_by_name(tiny_paths, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    args = ["--data", str(tiny_paths[KEY]), *args, "--out", str(tmp_path / "core_form.json")]
    assert_refused(SCRIPT, args, message, tmp_path, monkeypatch, capsys)


def test_a_folder_that_is_not_a_recording_is_refused(tiny_paths, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--data", str(tiny_paths[KEY].parent), "--out", str(tmp_path / "core_form.json")]
    assert_refused(SCRIPT, args, "is not a recording (no meta/ folder)", tmp_path, monkeypatch, capsys)


def test_a_variant_is_a_registered_model_with_core_changes_or_a_model_file(tmp_path):
    bench = bench_module("core_form")
    changed = bench.variant_config("twin:normalization=false, channels=32")
    assert changed.name == "twin" and not changed.core.normalization and changed.core.channels == 32
    assert changed.core.in_channels == 4 and changed.input_gradients  # the rest is the registered twin's
    path = tmp_path / "model.json"
    path.write_text(json.dumps(changed.to_dict()))
    assert bench.variant_config(str(path)) == changed
    # the readout, the inputs and the loss are fields too; the core's input channels follow the inputs
    plain = bench.variant_config("twin:position_init=random, correlation_weight=0, input_gradients=false")
    assert plain.readout.position_init == "random" and plain.correlation_weight == 0.0
    assert bench.variant_config("twin:correlation_rounds=1").correlation_rounds == 1
    assert not plain.input_gradients and plain.input_centered and plain.core.in_channels == 2
    assert plain.core == replace(bench.variant_config("twin").core, in_channels=2)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("twin:widht=3", "'widht=3'; expected FIELD=VALUE with FIELD one of ['batch_norm_momentum'"),
        ("twin:in_channels=2", "'in_channels=2'; expected FIELD=VALUE"),  # it follows the inputs
        ("twin:input_centered=1", "input_centered: 1; expected True or False"),
        ("twin:position_init=centre", "position_init: 'centre'; expected one of ['random', 'data']"),
        ("twin:correlation_weight=-1", "correlation_weight: -1; expected a number in [0.0, inf)"),
        ("twin:correlation_rounds=0", "correlation_rounds: 0; expected an integer >= 1, or None"),
        ("twin_behavior", "'twin_behavior' uses behaviour; expected an image-only model"),
    ],
)
def test_a_variant_with_a_bad_field_is_refused_by_name(spec, expected):
    with pytest.raises(InvalidInput, match=re.escape(expected)):
        bench_module("core_form").variant_config(spec)


def test_variants_with_one_label_are_refused(tiny_paths, tmp_path, monkeypatch, capsys):
    """A file's label is its name: two files of one name in two folders would share a row."""
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "twin.json").write_text(
            json.dumps(bench_module("core_form").variant_config("twin").to_dict())
        )
    args = ["--data", str(tiny_paths[KEY]), "--variant", "a/twin.json", "--variant", "b/twin.json"]
    args += ["--out", str(tmp_path / "out" / "core_form.json")]
    code, stderr = run_main(SCRIPT, args, monkeypatch, capsys)
    assert code == 2 and "expected distinct variants (a file's label is its name)" in stderr, stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_stopped_bench_stops_its_training_and_removes_its_temporary_folder(tiny_paths, tmp_path):
    """SIGTERM (`kill`, `timeout`) unwinds like Ctrl-C: the training cell's process is stopped and the
    temporary --work folder (runs and checkpoints) is removed, not left behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = [sys.executable, str(SCRIPT), "--data", str(tiny_paths[KEY]), "--variant", NARROW]
    args += ["--epochs", "200", "--out", str(tmp_path / "core_form.json")]
    process = subprocess.Popen(
        args, env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        while not list(scratch.glob("core_form-*/runs/*/members/member-0/checkpoint.pt")):  # one epoch done
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()[
                -3000:
            ]
            time.sleep(0.2)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        # the cell's process (multiprocessing's resource tracker, also a child, goes on its own after us)
        cells = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(cells) == 1 and alive(cells[0])
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0].decode()
    finally:
        process.kill()
    assert process.returncode != 0, output[-3000:]
    assert not (tmp_path / "core_form.json").exists()
    assert list(scratch.glob("core_form-*")) == [], output[-3000:]  # (torch keeps caches of its own there)
    assert not alive(cells[0])  # waited for before the bench exited
