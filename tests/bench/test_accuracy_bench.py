"""bench/accuracy.py with cells in parallel processes: the table fills cell by cell, the single-model row
can come from the ensemble's members, and an interrupted run leaves no training process behind and
continues its trainings from their checkpoints.

Needs the train extra (torch); not the `bench` extra (the reference row is not selected here).
"""

from __future__ import annotations

import json
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

from tests.helpers import assert_refused, bench_module, processes_naming, run_main

pytest.importorskip("torch", reason="torch: needs the train extra")

ROOT = Path(__file__).resolve().parents[2]


def _accuracy(data: Path, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, str(ROOT / "bench" / "accuracy.py"), "--quick", "--data", str(data)]
    return [*args, "--out", str(out), "--tracks", "sensorium+", "--jobs", "2", *extra]


@pytest.mark.slow
def test_cells_in_processes_fill_the_table_and_fine_tune_both_tracks_from_one_pretraining(tiny_sim, tmp_path):
    out = tmp_path / "accuracy.json"
    work = tmp_path / "work"
    # 4 channels, 1 epoch: the plumbing, not the figures (cells one after the other, in one process:
    # the resume test below)
    args = _accuracy(tiny_sim, out, "--rows", "cnn,twin,ensemble", "--epochs", "1", "--members", "2")
    args += ["--width", "4", "--twin-core", "channels=6,dropout=0.2", "--work", str(work)]
    args += ["--mei-steps", "5"]  # the MEIs of the in-silico check: measured, not judged
    args[args.index("--tracks") + 1] = "sensorium,sensorium+"
    done = subprocess.run(
        [*args, "--single-from-ensemble"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] and result["jobs"] == 2 and result["single_from_ensemble"]
    assert result["rows"] == ["cnn", "ensemble", "twin"] and result["tracks"] == ["sensorium", "sensorium+"]
    assert result["mei_steps"] == 5
    assert result["batch_size"] == 32 and result["lr"] == pytest.approx(0.009 * 32 / 128)  # --quick's
    table = result["table"]
    assert set(table) == {"CNN (ours)", "twin (1 model)", "twin ensemble (2)", "oracle"}
    for track in ("sensorium", "sensorium+"):
        ensemble = table["twin ensemble (2)"][track]
        assert ensemble["epochs"] == [1, 1]
        single = table["twin (1 model)"][track]
        assert single["from"] == "mean of the 2 members' own scores"
        assert single == {**ensemble["members_mean"], "from": single["from"]}
        assert set(ensemble["members"]) == {"member-0", "member-1"}  # each member's own scores: their spread
        for metric, mean in ensemble["members_mean"].items():
            assert mean == pytest.approx(np.mean([m[metric] for m in ensemble["members"].values()]))
        for row in ("CNN (ours)", "twin ensemble (2)"):
            scores = table[row][track]
            assert -1 <= scores["single_trial_correlation"] <= 1
            assert -1 <= scores["correlation_to_average"] <= 1
            # in silico against the simulated neurons: measured for each trained row (1 epoch: not judged)
            found = scores["in_silico"]
            assert found["center_error_px_median"] >= 0, found
            # the orientation error is a median over the orientation-selective neurons; a 1-epoch model
            # may tune none of them (so it did on an AVX-512 CPU): then there is no median, and it says so
            assert 0 <= found["selective_fraction"] <= 1, found
            if found["selective_fraction"] > 0:
                assert 0 <= found["orientation_error_deg_median"] <= 90, found
            else:
                assert found["orientation_error_deg_median"] is None, found
            assert 0 <= scores["in_silico"]["mei_filter_alignment_median"] <= 1
        floor = table["oracle"][track]["in_silico"]  # the ground truth: the experiments' own error
        assert floor["center_error_px_median"] < 0.5 and floor["orientation_error_deg_median"] < 1.0
        assert "mei_filter_alignment_median" not in floor  # no gradient, no MEIs
    assert "in silico, against the simulated neurons" in done.stdout

    # Both tracks fine-tune from one pre-training, trained by one cell and waited for by the other.
    cells = table["twin ensemble (2)"]
    pretrained = [cells[track]["pretrained"] for track in ("sensorium", "sensorium+")]
    assert pretrained[0]["run"] == pretrained[1]["run"] and pretrained[0]["run"].startswith("twin-2-")
    assert sorted(p["reused"] for p in pretrained) == [False, True]
    assert all(cells[track]["pretrained_on"] == 2 for track in cells)
    # where each training's time went: every member's epochs and median seconds per epoch
    for training in (pretrained[0], cells["sensorium"], cells["sensorium+"]):
        assert training["epochs"] == [1, 1] and len(training["epoch_seconds"]) == 2
        assert all(0 < s < 300 for s in training["epoch_seconds"])
        assert [len(c) for c in training["validation_curves"]] == [1, 1]
        assert all(-1 <= c[0] <= 1 for c in training["validation_curves"])
        # each member's share of neurons at the feature map's edge, per data key it reads out
        first, second = training["positions_at_edge"]
        assert set(first) == set(second) and len(first) >= 1
        assert all(0 <= share <= 1 for e in training["positions_at_edge"] for share in e.values())
    assert set(pretrained[0]["positions_at_edge"][0]) == {"90001-1-1", "90002-1-1"}
    # a cell's scores are its ensemble's, as `twin evaluate` scores the run
    from training.run import evaluate

    for track, key in (("sensorium", "90001-1-1"), ("sensorium+", "90002-1-1")):
        target = next(tiny_sim.glob(f"static{key}-*"))
        scores = evaluate(work / "runs" / cells[track]["run"]["name"], [target], "test")[key]
        for metric in ("single_trial_correlation", "correlation_to_average", "feve"):
            assert cells[track][metric] == pytest.approx(scores[metric], abs=1e-6)
    # --work keeps the runs; --twin-core reached every twin model (after --width: 4 -> 6 channels) and
    # no other
    runs = sorted((work / "runs").glob("*/run.json"))
    assert len(runs) == 5  # the pre-training, one fine-tuning per track, the CNN of each track
    for run in runs:
        description = json.loads(run.read_text())
        core = description["model"]["core"]
        twin_model = run.parent.name.startswith("twin")
        assert core["channels"] == (6 if twin_model else 4) and (core["dropout"] == 0.2) == twin_model
        # the twin models' own loss, Poisson + 1 x (1 - correlation), reached the members' training
        weight = 1.0 if twin_model else 0.0
        assert description["model"]["correlation_weight"] == weight
        assert description["train"]["correlation_weight"] == weight
        assert description["train"]["lr"] == pytest.approx(result["lr"])  # every training, at the table's


@pytest.mark.slow
def test_the_ablation_rows_train_each_without_one_ingredient(tiny_sim, tmp_path):
    # Four of the rows, one of each kind: trained without pre-training, with a pre-training of its own,
    # and two sharing the full model's. Every row's config: the test below.
    out = tmp_path / "accuracy.json"
    args = _accuracy(tiny_sim, out, "--rows", "twin", "--epochs", "1", "--skip-in-silico")
    args += ["--ablation", "pretraining,rf_start,modulator,shifter", "--width", "4"]  # plumbing, not figures
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    work = Path(re.search(r"working in (\S+) \(removed at the end", done.stdout).group(1))
    assert not work.exists()  # without --work: the temporary caches and runs are gone
    result = json.loads(out.read_text())
    assert result["ablations"] == ["pretraining", "rf_start", "modulator", "shifter"]
    table = result["table"]
    ablations = {row: cells["sensorium+"] for row, cells in table.items() if row.startswith("- ")}
    start = "- receptive-field start (random positions)"
    assert set(ablations) == {"- pre-training", start, "- modulator", "- shifter"}
    assert not [row for row, cell in ablations.items() if "error" in cell]
    # without pre-training: trained on the behaviour recording alone (the image-only one has none)
    assert ablations["- pre-training"]["pretrained_on"] == 0
    assert all(cell["pretrained_on"] == 2 for row, cell in ablations.items() if row != "- pre-training")
    # the rows whose image-only counterpart is the full model's share its pre-training
    full = table["twin (1 model)"]["sensorium+"]["pretrained"]["run"]
    assert (
        ablations["- modulator"]["pretrained"]["run"] == ablations["- shifter"]["pretrained"]["run"] == full
    )
    assert ablations[start]["pretrained"]["run"] != full  # its pre-training starts at random, too


def test_each_ablation_row_is_the_full_model_without_its_one_ingredient():
    import torch

    from training.models import RecordingShape, build

    accuracy = bench_module("accuracy")
    rows = accuracy._ablations(4, {}, resized=True)
    assert set(rows) == set(accuracy.ABLATIONS.values())
    names = {"sensorium": "twin", "sensorium+": "twin_behavior"}
    full = {track: accuracy.model_config(name, 4, core={}) for track, name in names.items()}
    # what each row changes, put back: the full model again
    restore = {
        "pretraining": lambda c: c,
        "correlation_loss": lambda c: replace(c, correlation_weight=1.0),
        "dropout": lambda c: replace(c, core=replace(c.core, dropout=0.1)),
        "rf_start": lambda c: replace(c, readout=replace(c.readout, position_init="data")),
        "residual_core": lambda c: replace(c, core=full_core),
        "normalization": lambda c: replace(c, core=replace(c.core, normalization=True)),
        "input_channels": lambda c: replace(
            c, input_gradients=True, input_centered=True, core=replace(c.core, in_channels=full_in)
        ),
        "resize": lambda c: replace(c, input_resize="area"),
        "modulator": lambda c: replace(c, modulator=True),
        "shifter": lambda c: replace(c, shifter=True),
    }
    shape = RecordingShape(n_neurons=3, coordinates=np.random.default_rng(0).normal(size=(3, 3)))
    for name, row in accuracy.ABLATIONS.items():
        tracks = rows[row]
        assert set(tracks) == ({"sensorium+"} if name in ("modulator", "shifter") else set(names))
        for track, (model, pretrained) in tracks.items():
            assert pretrained == (name != "pretraining"), name
            full_core, full_in = full[track].core, full[track].core.in_channels
            assert (model == full[track]) == (name == "pretraining"), name
            assert restore[name](model) == full[track], name
            # each builds, and its loss differentiates back to every parameter
            net = build(model, {"k": shape})
            batch = torch.rand(2, 1, *model.image_shape)
            behavior = torch.zeros(2, 3) if model.behavior_channels or model.modulator else None
            pupil = torch.zeros(2, 2) if model.shifter else None
            net(batch, "k", behavior=behavior, pupil_center=pupil).sum().backward()
            assert all(p.grad is not None for p in net.parameters() if p.requires_grad), name


def test_presets_that_resize_add_the_resize_row_and_only_it_switches_to_bilinear():
    accuracy = bench_module("accuracy")
    plain, resized = accuracy._ablations(8, {}, resized=False), accuracy._ablations(8, {}, resized=True)
    row = "- anti-aliased resize (the baseline's bilinear)"
    assert row not in plain and set(resized) == {*plain, row}
    names = {"sensorium": "twin", "sensorium+": "twin_behavior"}
    full = {track: accuracy.model_config(name, 8, core={}) for track, name in names.items()}
    for track, (model, pretrained) in resized[row].items():
        assert pretrained and model.input_resize == "bilinear" and full[track].input_resize == "area"
        assert replace(model, input_resize="area") == full[track]  # the one ingredient switched off


@pytest.mark.slow
def test_a_stopped_table_stops_every_trainer_keeps_its_file_and_continues_from_checkpoints(
    tiny_sim, tmp_path
):
    import torch

    data = shutil.copytree(tiny_sim, tmp_path / "sim")  # a path no other process names
    out, work = tmp_path / "accuracy.json", tmp_path / "work"
    args = _accuracy(data, out, "--rows", "ensemble", "--epochs", "5", "--members", "2", "--skip-in-silico")
    args[args.index("--tracks") + 1] = "sensorium"
    args += ["--width", "4", "--work", str(work)]  # plumbing, not figures
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a command started in the background of a shell inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Stopped once the pre-training's members have checkpointed an epoch: `twin train --nproc 2`,
    # torchrun and two workers are running then.
    deadline = time.monotonic() + 300
    checkpoints: list[Path] = []
    while len(checkpoints) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        checkpoints = sorted(work.glob("runs/twin-2-*/members/member-*/checkpoint.pt"))
        time.sleep(0.05)
    assert len(processes_naming(str(data))) >= 4
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=180)
    except subprocess.TimeoutExpired as exc:
        left = "\n".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
            for pid in processes_naming(str(data))
        )
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        proc.kill()
        raise AssertionError(
            f"still running 180 s after SIGINT:\n{left}\nstderr:\n{stderr[-4000:]}"
        ) from None
    assert proc.returncode != 0
    deadline = time.monotonic() + 60
    while processes_naming(str(data)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_naming(str(data)) == []  # nothing keeps training after the table stopped
    result = json.loads(out.read_text())  # the file of a run cut short: valid, and says so
    assert not result["complete"] and result["table"]["twin ensemble (2)"] == {}
    assert set(result["table"]["oracle"]) == {"sensorium", "sensorium+"}
    (pretraining,) = {c.parents[2] for c in checkpoints}
    assert not (pretraining / "metrics.json").exists()  # stopped mid-way, not finished
    kept = {}  # each member's epochs in its last checkpoint, as its log had them when it stopped
    for checkpoint in checkpoints:
        epochs = torch.load(checkpoint, weights_only=False)["state"]["epoch"]
        assert 1 <= epochs < 5
        kept[checkpoint.parent / "log.jsonl"] = (
            (checkpoint.parent / "log.jsonl").read_text().splitlines()[:epochs]
        )

    again = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"continuing {pretraining.name} from its members' checkpoints" in again.stdout
    for log, lines in kept.items():
        after = log.read_text().splitlines()
        # the checkpointed epochs are kept as they were (their own seconds); only the rest is trained
        assert len(after) == 5 and after[: len(lines)] == lines, (lines, after)
    cell = json.loads(out.read_text())["table"]["twin ensemble (2)"]["sensorium"]
    assert cell["pretrained"]["run"] == pretraining.name and cell["pretrained"]["epochs"] == [5, 5]
    assert cell["pretrained"]["continued"] and not cell["pretrained"]["reused"]
    assert cell["run"]["continued"] is False and cell["epochs"] == [5, 5]  # the fine-tuning: started anew
    assert (pretraining / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--rows",
            "cnn,lstm",
            "--rows: unknown ['lstm']; expected some of ['ln', 'cnn', 'twin', 'ensemble', 'reference']",
        ),
        (
            "--tracks",
            "sensorium++",
            "--tracks: unknown ['sensorium++']; expected some of ['sensorium', 'sensorium+']",
        ),
        ("--jobs", "0", "--jobs: 0; expected >= 1"),
        ("--ablation", "dropout,shift", "--ablation: unknown ['shift']; expected all or some of ['pretrain"),
        ("--ablation", "resize", "--ablation: resize: the recordings are at the models' resolution"),
        ("--members", "0", "--members: 0; expected >= 1"),
        ("--epochs", "0", "--epochs: 0; expected >= 1"),
        ("--batch-size", "0", "--batch-size: 0; expected >= 1"),
        ("--lr", "0", "--lr: 0.0; expected > 0"),
        ("--lr", "-0.001", "--lr: -0.001; expected > 0"),
        ("--mei-steps", "0", "--mei-steps: 0; expected >= 1"),
        ("--twin-core", "chanels=8", "--twin-core: 'chanels=8'; expected FIELD=VALUE with FIELD one of"),
        ("--twin-core", "channels=0", "--twin-core: channels: 0; expected an integer >= 1"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    tiny_sim, tmp_path, monkeypatch, capsys, option, value, message
):
    monkeypatch.chdir(tmp_path)
    args = ["--quick", "--data", str(tiny_sim), option, value]
    assert_refused(ROOT / "bench" / "accuracy.py", args, message, tmp_path, monkeypatch, capsys)


def test_a_work_folder_that_is_a_file_is_refused(tiny_sim, tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("a file")
    monkeypatch.chdir(tmp_path)
    args = ["--quick", "--data", str(tiny_sim), "--work", "taken"]
    code, stderr = run_main(ROOT / "bench" / "accuracy.py", args, monkeypatch, capsys)
    assert code == 2, stderr[-2000:]
    assert "--work: taken is a file; expected a folder (made if missing)" in stderr


@pytest.mark.parametrize(("steps", "per_round"), [("5", "2"), ("4", "8"), ("4", "0")])
def test_train_speed_refuses_rounds_that_do_not_divide_the_steps(tmp_path, steps, per_round):
    args = [sys.executable, str(ROOT / "bench" / "train_speed.py"), "--steps", steps]
    done = subprocess.run(
        [*args, "--steps-per-round", per_round], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert f"--steps-per-round: {per_round}; expected a divisor of --steps ({steps})" in done.stderr


@pytest.mark.slow
def test_resume_keeps_finished_cells_trains_the_rest_and_refuses_another_table(tiny_sim, tmp_path):
    out = tmp_path / "accuracy.json"
    args = _accuracy(tiny_sim, out, "--rows", "ln,cnn", "--epochs", "1", "--jobs", "1", "--skip-in-silico")
    args += ["--width", "4"]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # A run cut short after its first cell: the file holds that cell, the other is missing.
    cut = json.loads(out.read_text())
    kept, lost = cut["table"]["LN"]["sensorium+"], cut["table"]["CNN (ours)"].pop("sensorium+")
    cut["complete"] = False
    out.write_text(json.dumps(cut))

    again = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "kept 1 cells (LN / sensorium+)" in again.stdout
    result = json.loads(out.read_text())
    assert result["complete"]
    assert result["table"]["LN"]["sensorium+"] == kept  # not trained again: its own seconds and all
    assert "in_silico" not in result["table"]["oracle"]["sensorium+"]  # --skip-in-silico
    trained = result["table"]["CNN (ours)"]["sensorium+"]
    assert trained["in_silico"] is None
    assert trained["epochs"] == [1] and trained["run"] == lost["run"]  # the same training, done again
    assert trained["single_trial_correlation"] == pytest.approx(lost["single_trial_correlation"], abs=1e-6)
    (earlier,) = result["earlier_runs"]
    assert earlier["cells"] == ["LN / sensorium+"] and earlier["seconds"] == cut["seconds"]

    # Other settings: refused before anything trains, naming what differs; the file is left as it was.
    before = out.read_text()
    other = [
        *_accuracy(tiny_sim, out, "--rows", "ln,cnn", "--epochs", "2", "--jobs", "1", "--skip-in-silico")
    ]
    other += ["--width", "4"]
    other.append("--resume")
    refused = subprocess.run(other, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr and "max_epochs 1 here 2" in refused.stderr
    assert out.read_text() == before


def test_a_work_folder_keeps_its_simulation_for_the_next_table_and_refuses_another_preset(tiny_sim):
    accuracy = bench_module("accuracy")
    summary = tiny_sim / "simulation.json"
    before = summary.stat().st_mtime_ns
    accuracy.simulated_once("tiny", tiny_sim)  # an earlier table's: kept, not simulated again
    assert summary.stat().st_mtime_ns == before
    refused = "holds the 'tiny' preset's simulation with seed 0; expected 'small'"
    with pytest.raises(ValueError, match=refused):
        accuracy.simulated_once("small", tiny_sim)


def test_a_result_file_from_before_an_option_resumes_only_at_its_default():
    accuracy = bench_module("accuracy")
    oracle = {"sensorium": {"single_trial_correlation": 0.4, "correlation_to_average": 0.8, "feve": 1.0}}
    result = {k: None for k in accuracy._RESUME_SAME} | {"benchmark": "accuracy", "device": "cpu"}
    result |= {"mei_steps": accuracy.MEI_STEPS, "lr": 0.009, "table": {"oracle": oracle}}
    # written before --mei-steps and --lr existed (the learning rate was 0.009 at every batch size)
    earlier = {k: v for k, v in result.items() if k not in ("mei_steps", "lr")}
    assert accuracy.resume_mismatch(earlier, result) == []
    other = {**result, "mei_steps": 5}
    assert accuracy.resume_mismatch(earlier, other) == [f"mei_steps {accuracy.MEI_STEPS} here 5"]
    # a --quick file from then trained at 0.009: the scaled default now is another table
    scaled = {**result, "lr": accuracy.scaled_lr(32)}
    assert accuracy.resume_mismatch(earlier, scaled) == ["lr 0.009 here 0.00225"]
