"""Benchmark: the model table on the simulated mouse, both tracks, test tier, against the oracle.

Rows: LN, our CNN, the reference CNN (neuralpredictors 0.3.0, same data, same recipe), our `twin` model
(one member), a `twin` ensemble, and the ground-truth oracle. Columns per track: single-trial
correlation, correlation to average, FEVE. SENSORIUM track = the image-only recording (models without
behaviour, trained with one shared core on every recording of the preset); SENSORIUM+ track = the
behaviour recording (the behaviour variants: cnn_behavior, twin_behavior, reference with behaviour
channels and shifter). Held-out test responses are read from the simulation's held_out/ folder.
In silico, per row of ours and the oracle: the median distance of the sparse-noise receptive-field
centres from the true ones and the median preferred-orientation error of grating tuning, against the
simulated neurons (`in_silico`, twin.experiments); the oracle's row is the experiments' own error floor.
For our rows also the MEIs' alignment with the true receptive fields (1: each MEI is its neuron's Gabor).

`twin` rows pre-train one core on every recording and fine-tune it on the track's recording, when the
preset has more than one (the winners' recipe). The pre-trained model is the image-only counterpart of
the row's model (every recording can train it, also one whose behaviour is zeroed), so both tracks
fine-tune from one pre-training run, trained once: `twin_behavior` starts from `twin`'s core with its
behaviour channels' weights at zero (training.run.initialize_from). `--ablation` adds rows that switch
off one ingredient of `twin` / `twin_behavior` at a time (single models); `--ablation rf_start,dropout`
adds some of them (names: ABLATIONS).
`--single-from-ensemble` fills the `twin (1 model)` row with the ensemble members' own test scores,
averaged, instead of training one more model per track (each member trains on the train tier less its
early-stopping split, so the row slightly understates a model trained alone; the ablation rows are
models trained alone, so leave it out beside --ablation: their changes are against that row).

    python bench/accuracy.py --device cuda --amp --jobs 4    # small preset: the GPU job (one H100/H200)
    python bench/accuracy.py --quick                  # tiny preset, 16-channel models: CPU pipeline check
    python bench/accuracy.py --quick --ablation       # ... with the ablation rows
    python bench/accuracy.py --device cuda --amp --rows cnn,reference --tracks sensorium+   # a part
    python bench/accuracy.py --device cuda --amp --rows twin --twin-core channels=128 --work runs/w128
                                                      # a twin variant, its runs kept in runs/w128

`--jobs N` trains the table's cells in N processes at once, and the members of an ensemble in parallel
processes (`twin train --nproc`). Cells are independent (each trains its own models from the same
seed), so the table is the same as with `--jobs 1` up to the nondeterminism of GPU kernels. On one GPU
the processes time-share it: on an H200 a cell took 4-5x as long with 10 jobs as with 3, so a few jobs
fill the gaps between one process's kernel launches and more buy little. A cell that fails is reported
as failed and the others go on.

Prints a table and writes bench/results/accuracy-<preset or quick>-<device>.json (or --out), rewritten
after every finished cell ("complete": false until the last), so a run cut short keeps what it trained;
`--resume` continues such a file: the same settings on the same data (checked: a file of another table
is refused) keep its finished cells and train only the rest (its earlier runs are listed in the file).
`--work DIR` keeps the simulation and the trainings in DIR, the latter named after what they train: a
later table reuses the simulation and the finished trainings and continues those an interrupted table
left from their members' last checkpoints, so a stopped `--resume --work DIR` run loses only the epochs
it was in. A run stored before a config field existed
(under the name its fields then gave it) is found by what its run.json trains.
`--skip-in-silico` leaves out the in-silico measurements (the MEIs cost minutes per cell on CPU);
`--mei-steps N` shortens the MEIs' gradient ascent (default 100; a pipeline check needs a few).
The learning rate defaults to the recipe's 0.009 for batch 128 scaled linearly with `--batch-size`
(0.00225 at `--quick`'s 32; at 0.009 a 16-channel `twin` at batch 32 fails to learn on `tiny` in some
seeds), and the reference CNN trains at it too; `--lr` sets it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate import device_info, interrupt_on_sigterm, machine, positive_or

from training.data import MODEL_IMAGE_SIZE
from training.distributed import launch
from training.models import CoreConfig, ModelConfig, get_config
from training.run import load_members, load_tensors, train_run
from training.trainer import LOG, TrainConfig, positions_at_edge
from twin import metrics
from twin.atomic import write_json
from twin.data import load_recording, simulate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TRACKS = {"sensorium": "image_only", "sensorium+": "behavior"}
# --rows keys -> the start of the row names they select
ROWS = {
    "ln": "LN",
    "cnn": "CNN (ours)",
    "twin": "twin (1 model)",
    "ensemble": "twin ensemble",
    "reference": "CNN (reference)",
}

# --ablation names -> the rows they add: `twin` / `twin_behavior` without that one ingredient
ABLATIONS = {
    "pretraining": "- pre-training",
    "correlation_loss": "- correlation loss",
    "dropout": "- dropout",
    "rf_start": "- receptive-field start (random positions)",
    "residual_core": "- residual core",
    "normalization": "- divisive normalization",
    "input_channels": "- extra input channels",
    "resize": "- anti-aliased resize (the baseline's bilinear)",
    "modulator": "- modulator",
    "shifter": "- shifter",
}


def _recordings(data: Path) -> dict[str, dict]:
    summary = json.loads((data / "simulation.json").read_text())
    return {r["role"]: {**r, "path": data / r["folder"]} for r in summary["recordings"]}


def sensorium_scores(s: dict) -> dict:
    return {k: s[k] for k in ("single_trial_correlation", "correlation_to_average", "feve")}


def model_config(name: str, width: int | None, **changes) -> ModelConfig:
    """A registered config, its core narrowed to `width` channels (CPU budgets), with field changes."""
    config = get_config(name)
    core = config.core if width is None else replace(config.core, channels=width)
    core = replace(core, **changes.pop("core", {}))
    return replace(config, core=core, **changes)


def image_only(model: ModelConfig) -> ModelConfig:
    """The model without behaviour (channels, shifter, modulator): what pre-trains its core."""
    if not (model.behavior_channels or model.shifter or model.modulator):
        return model
    return replace(
        model.with_inputs(behavior_channels=False),
        name=model.name.removesuffix("_behavior"),
        shifter=False,
        modulator=False,
    )


def _training(
    model: ModelConfig, paths: list[Path], members: int, config: TrainConfig, init_from: str | None
) -> dict:
    """What a run trains, as it compares: the model and the training settled as run.json states them."""
    return {
        "model": model.to_dict(),
        "paths": [str(Path(p).resolve()) for p in paths],
        "members": members,
        "train": asdict(config.for_model(model)),
        "init_from": init_from,
    }


def stored_alike(folder: Path, model: ModelConfig, members: int, training: dict) -> Path | None:
    """A run in `folder` under another name whose run.json trains what `training` says.

    Run names digest every config field, so a field added since a run was stored (at the default that
    keeps the stored model as it was) renames it; its run.json, loaded with the fields added since at
    their defaults, still says it is the same training. Runs whose run.json is missing, unreadable or of
    another training are not it."""
    for candidate in sorted(folder.glob(f"{model.name}-{members}-*/run.json")):
        try:
            stored = json.loads(candidate.read_text())
            recorded = ModelConfig.from_dict(stored["model"])
            settled = TrainConfig(**stored["train"])  # fields added since: their defaults
            paths = [Path(p) for p in stored["recordings"].values()]
            alike = _training(recorded, paths, stored["members"], settled, stored.get("init_from"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if alike == training:
            return candidate.parent
    return None


def trained_once(
    model: ModelConfig,
    paths: list[Path],
    members: int,
    config: TrainConfig,
    folder: Path,
    nproc: int,
    init_from: Path | None = None,
) -> tuple[Path, bool, bool]:
    """The run training `model` on `paths`, trained by the first cell that needs it while the others
    wait (a file lock: cells run in processes), and reused after: (run, reused, continued). Cells of both
    tracks share a pre-training this way, and the LN rows their one training. A run that an earlier
    process left unfinished in `folder` (stopped, killed) is continued from its members' last checkpoints
    (`twin train --resume`): only the interrupted epochs are trained again. A run stored under the name
    an earlier set of config fields gave it is found by what its run.json trains (`stored_alike`)."""
    spec = {"model": model.to_dict(), "paths": [str(p) for p in paths], "members": members}
    spec |= {"train": asdict(config), "init_from": None if init_from is None else str(init_from)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / f"{model.name}-{members}-{digest}"
    with contextlib.ExitStack() as locks:

        def lock(name: str) -> None:  # released when the file closes, also if this process dies
            fcntl.flock(locks.enter_context(open(folder / f"{name}.lock", "w")), fcntl.LOCK_EX)

        lock(run.name)
        if not (run / "run.json").is_file():
            training = _training(model, paths, members, config, spec["init_from"])
            alike = stored_alike(folder, model, members, training)
            if alike is not None:
                run = alike
                lock(run.name)  # its own name's lock: a process of the other name may be training it
        if (run / "metrics.json").is_file():
            return run, True, False
        continued = (run / "run.json").is_file()  # started by an earlier process, which stopped
        if continued:
            print(f"continuing {run.name} from its members' checkpoints", flush=True)
        train_members(paths, model, run, members, config, init_from, nproc, resume=continued)
    return run, False, continued


MEI_NEURONS, MEI_STEPS = 32, 100  # the in-silico MEI check: the recording's first 32 neurons


def run_ours(
    model: ModelConfig,
    paths: list[Path],
    target: Path,
    members: int,
    config: TrainConfig,
    work: Path,
    pretrain: list[Path] | None = None,
    nproc: int = 1,
    measure_in_silico: bool = True,
    mei_steps: int = MEI_STEPS,
) -> dict:
    """Train (pre-train on `pretrain`, fine-tune on `paths`); the ensemble's scores on target's test tier.

    Runs live in `work`, named after what they train, where other cells with the same training (the
    pre-training of the model's image-only counterpart; the same model on the same recordings) find
    them. nproc > 1: the members train in that many processes at once (`twin train --nproc`)."""
    started = time.perf_counter()
    init_from, pretraining = None, None
    if pretrain:
        init_from, reused, continued = trained_once(image_only(model), pretrain, members, config, work, nproc)
        pretraining = {
            "run": init_from.name,
            "reused": reused,
            "continued": continued,
            **members_training(init_from),
        }
    pretraining_seconds = round(time.perf_counter() - started, 1)
    run, reused, continued = trained_once(model, paths, members, config, work, nproc, init_from)
    recordings = json.loads((run / "run.json").read_text())["recordings"]
    key = next(k for k, p in recordings.items() if Path(p).resolve() == target.resolve())
    # The run's own test scores (metrics.json, scored on the training device when it finished): the
    # ensemble's (what `twin evaluate` prints), and each member's: their spread (seeds and early-stopping
    # splits) is the noise a row difference has to exceed; their mean, what one model scores alone.
    test = json.loads((run / "metrics.json").read_text())["test"][key]
    each = {name: sensorium_scores(m) for name, m in test["members"].items()}
    return {
        **sensorium_scores(test["ensemble"]),
        **members_training(run),
        "pretrained_on": len(pretrain or []),
        "pretrained": pretraining,
        # continued: an earlier process trained part of it (then its seconds are those of the rest)
        "run": {"name": run.name, "reused": reused, "continued": continued},
        # pre-training (or waiting for another cell's); then all: fine-tuning (or waiting) and scoring
        "pretraining_seconds": pretraining_seconds,
        "seconds": round(time.perf_counter() - started, 1),
        "members_mean": {
            k: float(np.mean([s[k] for s in each.values()])) for k in sensorium_scores(test["ensemble"])
        },
        "members": each,
        "in_silico": in_silico(run, target, key, config.device, mei_steps) if measure_in_silico else None,
    }


def members_training(run: Path) -> dict[str, list]:
    """Each member's epochs, median seconds per epoch, validation correlation after every epoch and the
    epochs its readout positions were held (`readout.position_warmup`), all from its log, in member
    order: what a cell's time went to (an epoch's seconds include its validation and checkpoint) and how
    fast it learnt; and, from its best weights, the share of each readout's neurons whose positions sit
    at the feature map's edge (where a readout that stalled left them)."""
    folders = sorted((run / "members").glob("member-*"), key=lambda f: int(f.name.rsplit("-", 1)[1]))
    epochs, seconds, curves, held = [], [], [], []
    for folder in folders:
        epochs.append(json.loads((folder / "training.json").read_text())["epochs"])
        lines = [json.loads(line) for line in (folder / LOG).read_text().splitlines()]
        seconds.append(round(float(np.median([line["seconds"] for line in lines])), 3))
        curves.append([round(float(line["validation_correlation"]), 4) for line in lines])
        held.append(sum(bool(line.get("positions_held")) for line in lines))
    _, members = load_members(run)
    return {
        "epochs": epochs,
        "epoch_seconds": seconds,
        "validation_curves": curves,
        "positions_held": held,
        "positions_at_edge": [positions_at_edge(member) for member in members],
    }


def in_silico(
    run: Path | None, target: Path, key: str, device: str = "cpu", mei_steps: int = MEI_STEPS
) -> dict:
    """How closely the trained ensemble's sparse-noise receptive fields and grating tuning match the
    simulated neurons' true centres and orientations, and how much of its MEIs (of MEI_NEURONS neurons,
    `mei_steps` steps of gradient ascent) is the neurons' true receptive fields (twin.experiments; the
    model in torch on `device`; run None: the ground truth itself, the experiments' own error floor; it
    has no gradient, so no MEIs).
    Behaviour models see the stimuli at the recording's mean behaviour and pupil position, where the
    ground truth's gain is about 1 and the eye at rest. An error is recorded, not raised: the cell's
    scores stand without it."""
    try:
        from training.torch_twin import TorchTwin
        from twin.experiments import (
            GroundTruthTwin,
            most_exciting_images,
            orientation_tuning,
            receptive_fields,
        )

        truth = GroundTruthTwin(target.parent, key)
        model = truth if run is None else TorchTwin(run, key, device=device)
        condition = {}
        if any(model.info()["requires"].values()):
            condition = {"behavior": "mean", "pupil_center": "mean"}  # the recording's training trials
        fields = truth.score_receptive_fields(receptive_fields(model, **condition))
        tuning = truth.score_tuning(orientation_tuning(model, **condition))
        keep = ("center_error_px_median", "within_2px_fraction")
        scores = {k: fields[k] for k in keep} | {
            k: tuning[k]
            for k in ("orientation_error_deg_median", "selective_fraction", "period_rank_correlation")
        }
        if run is not None:
            ids = truth.neuron_ids[:MEI_NEURONS]
            meis = most_exciting_images(model, ids, steps=mei_steps, **condition)
            scores["mei_filter_alignment_median"] = float(np.median(truth.filter_alignment(meis.images, ids)))
        return scores
    except Exception as exc:  # a failed extra measurement must not lose the trained cell
        return {"error": f"{type(exc).__name__}: {exc}"}


def simulated_once(preset: str, folder: Path) -> None:
    """The `preset` simulation (seed 0) in `folder`: simulated there, or kept from an earlier table with the
    same --work (a simulation is renamed into place whole: its simulation.json marks a finished one)."""
    summary = folder / "simulation.json"
    if not summary.is_file():
        simulate(preset, folder, seed=0, progress=False)
        return
    found = json.loads(summary.read_text())
    if (found.get("preset"), found.get("seed")) != (preset, 0):
        raise ValueError(
            f"{folder} holds the {found.get('preset')!r} preset's simulation with seed {found.get('seed')}; "
            f"expected {preset!r} with seed 0 (another --work, or --data {folder})"
        )


def scaled_lr(batch_size: int) -> float:
    """The recipe's learning rate (the reference's, for its batch of 128) scaled linearly to `batch_size`:
    as many steps per epoch at the same rate made narrow models on few trials fail to learn."""
    return TrainConfig.lr * batch_size / TrainConfig.batch_size


# TrainConfig fields that `twin train` does not take: they must keep their defaults to train through it.
_CLI_FIXED = ("patience", "lr_decay_factor", "lr_decay_steps", "min_lr", "tolerance", "scale_loss")


def train_members(
    paths: list[Path],
    model: ModelConfig,
    out: Path,
    members: int,
    config: TrainConfig,
    init_from: Path | None,
    nproc: int,
    resume: bool = False,
) -> None:
    """training.run.train_run, in this process, or under torchrun as `twin train --nproc` when nproc > 1;
    resume: each member goes on from its last checkpoint in `out`."""
    if nproc <= 1 or members <= 1:
        train_run(
            paths,
            model,
            out,
            members=members,
            config=config,
            resume=resume,
            progress=False,
            init_from=init_from,
        )
        return
    default = TrainConfig()
    changed = [f for f in _CLI_FIXED if getattr(config, f) != getattr(default, f)]
    if changed:
        raise ValueError(f"train config: {changed} differ from their defaults; `twin train` cannot set them")
    spec = out.parent / f"{out.name}-model.json"
    write_json(spec, model.to_dict())
    # `twin train --nproc`'s launcher: interrupted, it stops torchrun and its workers before returning.
    launch(
        min(nproc, members),
        data=paths,
        model=spec,
        members=members,
        out=out,
        epochs=config.max_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        correlation_weight=config.correlation_weight,
        correlation_rounds=config.correlation_rounds,
        seed=config.seed,
        device=config.device,
        amp=config.amp,
        channels_last=config.channels_last,
        init_from=init_from,
        resume=resume,
    )


def run_reference(
    paths: list[Path], target: Path, behavior: bool, config: TrainConfig, width: int | None, work: Path
) -> dict:
    """The neuralpredictors baseline, trained with its own loaders and loop, early-stopped on validation."""
    import reference

    started = time.perf_counter()
    device = config.device
    loaders = reference.reference_loaders(
        paths,
        batch_size=config.batch_size,
        include_behavior=behavior,
        include_eye_position=behavior,
        cuda=device.startswith("cuda"),
        workdir=work / "reference-data",
        materialize=True,  # same items; not bound by per-trial reads over a long run
    )
    overrides = {} if width is None else {"hidden_channels": width}
    model = reference.build_reference_model(loaders, shifter=behavior, **overrides).to(device)
    outcome = reference.train_early_stopped(
        model, loaders, max_epochs=config.max_epochs, lr=config.lr, device=device
    )
    key = next(k for k in loaders["test"] if str(target.name).startswith(f"static{k}"))
    _, prediction = reference.predict_reference(model, loaders["test"][key], key, device)
    truth = load_tensors([target], with_held_out=True)[key]
    idx = truth.indices("test")
    scores = metrics.score(truth.responses[idx].numpy(), prediction, truth.image_ids[idx])
    return {
        **sensorium_scores(scores.to_dict()),
        "epochs": outcome["epochs"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def core_changes(text: str) -> dict[str, object]:
    """--twin-core "channels=128,layers=6" -> {"channels": 128, "layers": 6} (values read as JSON)."""
    return field_changes(text, {f.name for f in fields(CoreConfig)} - {"in_channels"})  # follows the inputs


def field_changes(text: str, known: set[str]) -> dict[str, object]:
    """Parse FIELD=VALUE pairs, "a=1, b=x" -> {"a": 1, "b": "x"} (values read as JSON, else kept as text);
    a FIELD not among `known` is refused, naming the known ones."""
    changes: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in known:
            raise ValueError(f"{item!r}; expected FIELD=VALUE with FIELD one of {sorted(known)}")
        try:
            changes[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            changes[name.strip()] = value.strip()
    return changes


def _ablations(
    width: int | None, twin_core: dict[str, object], resized: bool
) -> dict[str, dict[str, tuple[ModelConfig, bool]]]:
    """Rows: twin minus one ingredient -> {track: (model config, pre-train)}. resized: the recordings'
    images are not at the models' resolution (else the resize row would train the full model again)."""
    full = {
        "sensorium": model_config("twin", width, core=twin_core),
        "sensorium+": model_config("twin_behavior", width, core=twin_core),
    }
    baseline_core = {"kind": "cnn", "hidden_kernel": 7, "depthwise": True, "dropout": 0.0, "residual": False}
    rows: dict[str, dict[str, tuple[ModelConfig, bool]]] = {
        ABLATIONS["pretraining"]: {t: (c, False) for t, c in full.items()},
        ABLATIONS["correlation_loss"]: {
            t: (replace(c, correlation_weight=0.0), True) for t, c in full.items()
        },
        ABLATIONS["dropout"]: {
            t: (replace(c, core=replace(c.core, dropout=0.0)), True) for t, c in full.items()
        },
        ABLATIONS["rf_start"]: {
            t: (replace(c, readout=replace(c.readout, position_init="random")), True) for t, c in full.items()
        },
        ABLATIONS["residual_core"]: {
            t: (replace(c, core=replace(c.core, **baseline_core)), True) for t, c in full.items()
        },
        ABLATIONS["normalization"]: {
            t: (replace(c, core=replace(c.core, normalization=False)), True) for t, c in full.items()
        },
        ABLATIONS["input_channels"]: {
            t: (c.with_inputs(input_gradients=False, input_centered=False), True) for t, c in full.items()
        },
    }
    if resized:
        rows[ABLATIONS["resize"]] = {t: (replace(c, input_resize="bilinear"), True) for t, c in full.items()}
    behavior = full["sensorium+"]
    rows[ABLATIONS["modulator"]] = {"sensorium+": (replace(behavior, modulator=False), True)}
    rows[ABLATIONS["shifter"]] = {"sensorium+": (replace(behavior, shifter=False), True)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="simulated preset (default: small; tiny with --quick)")
    parser.add_argument("--data", type=Path, default=None, help="an existing `twin simulate` output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast of the forward pass")
    parser.add_argument("--quick", action="store_true", help="tiny preset, narrow models: a pipeline check")
    parser.add_argument("--members", type=int, default=None, help="ensemble size (default 5; 3 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap (default 200; 40 with --quick)")
    parser.add_argument(
        "--width", type=int, default=None, help="core channels of every model (16 with --quick)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 128; 32 with --quick")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate (default {TrainConfig.lr} x batch size / {TrainConfig.batch_size})",
    )
    parser.add_argument(
        "--ablation",
        nargs="?",
        const="all",
        default=None,
        help=f"add rows without one twin ingredient each: all, or some of {','.join(ABLATIONS)}",
    )
    parser.add_argument(
        "--twin-core",
        default="",
        help='changes to the twin models\' core config, e.g. "channels=128,hidden_kernel=5" (after --width)',
    )
    parser.add_argument("--skip-reference", action="store_true", help="leave out the neuralpredictors row")
    parser.add_argument(
        "--skip-in-silico", action="store_true", help="leave out the in-silico measurements (scores only)"
    )
    parser.add_argument(
        "--mei-steps",
        type=int,
        default=None,
        help=f"gradient steps of each in-silico MEI (default {MEI_STEPS}; its cost: minutes per cell on CPU)",
    )
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows to train, of {','.join(ROWS)}")
    parser.add_argument("--tracks", default=",".join(TRACKS), help="tracks to train (default both)")
    parser.add_argument(
        "--single-from-ensemble",
        action="store_true",
        help="the twin (1 model) row: the ensemble members' own scores, averaged, instead of one more model",
    )
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once, in processes (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="the result file (default bench/results/...)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the cells that an earlier run of the same table on the same data wrote to the result "
        "file, and train only the missing or failed ones",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the simulation, caches and training runs here (default: a temporary folder, removed)",
    )
    args = parser.parse_args()
    args.jobs = positive_or(parser, "--jobs", args.jobs, 1)
    preset = args.preset or ("tiny" if args.quick else "small")
    members = positive_or(parser, "--members", args.members, 3 if args.quick else 5)
    epochs = positive_or(parser, "--epochs", args.epochs, 40 if args.quick else 200)
    width = positive_or(parser, "--width", args.width, 16 if args.quick else None)
    batch_size = positive_or(parser, "--batch-size", args.batch_size, 32 if args.quick else 128)
    mei_steps = positive_or(parser, "--mei-steps", args.mei_steps, MEI_STEPS)
    lr = scaled_lr(batch_size) if args.lr is None else args.lr
    if not lr > 0:
        parser.error(f"--lr: {args.lr}; expected > 0")
    ablations = []
    if args.ablation is not None:
        ablations = list(ABLATIONS) if args.ablation == "all" else args.ablation.split(",")
        unknown = [name for name in ablations if name not in ABLATIONS]
        if unknown:
            parser.error(f"--ablation: unknown {unknown}; expected all or some of {list(ABLATIONS)}")
    chosen_rows = set(args.rows.split(","))
    tracks = set(args.tracks.split(","))
    for option, chosen, known in (("--rows", chosen_rows, ROWS), ("--tracks", tracks, TRACKS)):
        if chosen - set(known):
            parser.error(f"{option}: unknown {sorted(chosen - set(known))}; expected some of {list(known)}")
    try:
        twin_core = core_changes(args.twin_core)
        model_config("twin_behavior", width, core=twin_core)  # refused here, not in a cell
    except ValueError as exc:
        parser.error(f"--twin-core: {exc}")
    if args.work is None:  # simulations, caches and runs: a temporary folder, gone at the end
        work = Path(tempfile.mkdtemp(prefix="twin-accuracy-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    else:
        work = args.work.resolve()
        if work.exists() and not work.is_dir():
            parser.error(f"--work: {args.work} is a file; expected a folder (made if missing)")
        work.mkdir(parents=True, exist_ok=True)
    print(f"working in {work}" + ("" if args.work else " (removed at the end; --work DIR keeps it)"))
    os.environ.setdefault("TWIN_CACHE_DIR", str(work / "cache"))
    # The torchrun workers of parallel ensembles (`python -m training`) import the project from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    data = args.data or work / preset
    if args.data is None:
        try:
            simulated_once(preset, data)
        except ValueError as exc:
            parser.error(f"--work: {exc}")
    roles = _recordings(data)
    every = [r["path"] for r in roles.values()]
    config = TrainConfig(
        max_epochs=epochs, batch_size=batch_size, lr=lr, device=args.device, amp=args.amp, seed=0
    )
    target = {track: roles[role]["path"] for track, role in TRACKS.items()}
    # Pre-train (the image-only counterpart of the track's model) on every recording, when there is
    # more than the target.
    pretrain = every if len(every) > 1 else None
    # Without pre-training, a model trains at once on every recording it can use (a behaviour model:
    # those whose behaviour is not zeroed).
    usable = {
        "sensorium": every,
        "sensorium+": [r["path"] for r in roles.values() if r["role"] != "image_only"],
    }
    plan: dict[str, dict[str, tuple]] = {
        # row: {track: (model, training recordings, config, members, pre-training recordings)}
        "LN": {
            "sensorium": (model_config("ln", width), every, config, 1, None),
            "sensorium+": (model_config("ln", width), every, config, 1, None),
        },
        "CNN (ours)": {
            "sensorium": (model_config("cnn", width), every, config, 1, None),
            "sensorium+": (model_config("cnn_behavior", width), [target["sensorium+"]], config, 1, None),
        },
    }
    for row, n in (("twin (1 model)", 1), (f"twin ensemble ({members})", members)):
        plan[row] = {
            "sensorium": (
                model_config("twin", width, core=twin_core),
                [target["sensorium"]],
                config,
                n,
                pretrain,
            ),
            "sensorium+": (
                model_config("twin_behavior", width, core=twin_core),
                [target["sensorium+"]],
                config,
                n,
                pretrain,
            ),
        }
    if ablations:
        sizes = {load_recording(p, progress=False).image_shape for p in target.values()}
        rows_without = _ablations(width, twin_core, sizes != {MODEL_IMAGE_SIZE})
        if ABLATIONS["resize"] not in rows_without and "resize" in ablations:
            if args.ablation != "all":
                parser.error("--ablation: resize: the recordings are at the models' resolution; none to undo")
            ablations.remove("resize")
        wanted = {ABLATIONS[name] for name in ablations}
        for row, variants in rows_without.items():
            if row not in wanted:
                continue
            plan[row] = {
                track: (
                    model,
                    [target[track]] if pre else usable[track],
                    config,
                    1,
                    pretrain if pre else None,
                )
                for track, (model, pre) in variants.items()
            }
    plan = {
        row: {t: cell for t, cell in cells.items() if t in tracks}
        for row, cells in plan.items()
        if not any(row.startswith(ROWS[key]) for key in set(ROWS) - chosen_rows)
    }
    plan = {row: cells for row, cells in plan.items() if cells}
    if "reference" not in chosen_rows:
        args.skip_reference = True
    table: dict[str, dict] = {row: {} for row in plan}
    if not args.skip_reference:
        table["CNN (reference)"] = {}
    table["oracle"] = {
        "sensorium": {**roles["image_only"]["ceilings"]["test"]["image_only"]},
        "sensorium+": {**roles["behavior"]["ceilings"]["test"]["with_behavior"]},
    }
    # (row, track, function, keyword arguments): the reference and the ensembles first (the longest).
    cells: list[tuple[str, str, object, dict]] = []
    if not args.skip_reference:
        for track, paths in (("sensorium", every), ("sensorium+", [target["sensorium+"]])):
            if track not in tracks:
                continue
            kwargs = {"paths": paths, "target": target[track], "behavior": track == "sensorium+"}
            kwargs |= {"config": config, "width": width, "work": work / f"reference-{track}"}
            cells.append(("CNN (reference)", track, run_reference, kwargs))
    single, ensemble = "twin (1 model)", f"twin ensemble ({members})"
    derived = args.single_from_ensemble and single in plan and ensemble in plan
    # Derived: the single-model row comes from the ensemble's members, with no training of its own.
    plan_cells = [row for row in plan if not (derived and row == single)]
    rows = sorted(plan_cells, key=lambda row: -max(t[3] for t in plan[row].values()))
    for row in rows:
        for track, (model, paths, cfg, n, pre) in plan[row].items():
            kwargs = {"model": model, "paths": paths, "target": target[track]}
            kwargs |= {"members": n, "config": cfg, "work": work / "runs", "pretrain": pre}
            kwargs["nproc"] = n if args.jobs > 1 else 1
            kwargs["measure_in_silico"] = not args.skip_in_silico
            kwargs["mei_steps"] = mei_steps
            cells.append((row, track, run_ours, kwargs))

    result = {
        "benchmark": "accuracy",
        "preset": preset,
        "quick": args.quick,
        "members": members,
        "max_epochs": epochs,
        "width": width,
        "twin_core": twin_core,
        "batch_size": batch_size,
        "lr": lr,
        "mei_steps": mei_steps,
        "device": args.device,
        "amp": args.amp,
        "jobs": args.jobs,
        "single_from_ensemble": derived,
        "rows": sorted(chosen_rows),
        "ablations": ablations,
        "tracks": sorted(tracks),
        "machine": {**machine(), **device_info(args.device)},
        "date": time.strftime("%Y-%m-%d"),
        "complete": False,
        "table": table,
    }
    tag = "quick" if args.quick else preset
    if chosen_rows != set(ROWS) or tracks != set(TRACKS):  # a part of the table: not the whole's file
        tag += (
            "-"
            + "-".join(t.replace("+", "_plus") for t in sorted(tracks))
            + "-"
            + "_".join(sorted(chosen_rows))
        )
    path = args.out or RESULTS / f"accuracy-{tag}-{args.device.split(':')[0]}.json"
    if args.resume and path.is_file():
        earlier = json.loads(path.read_text())
        mismatch = resume_mismatch(earlier, result)
        if mismatch:
            parser.error(f"--resume: {path} holds another table ({'; '.join(mismatch)}); use another --out")
        kept = keep_cells(earlier, table)
        result["earlier_runs"] = [
            *earlier.get("earlier_runs", []),
            {k: earlier.get(k) for k in ("date", "seconds", "jobs", "machine")} | {"cells": kept},
        ]
        print(f"resuming {path}: kept {len(kept)} cells ({', '.join(kept) or 'none'})")
        cells = [c for c in cells if not table[c[0]].get(c[1])]
    for track, role in TRACKS.items():  # after --resume's checks: they need the oracle's scores, not this
        if not args.skip_in_silico:
            table["oracle"][track]["in_silico"] = in_silico(None, target[track], roles[role]["data_key"])
    started = time.perf_counter()
    write_json(path, result)  # the plan and the oracle, before any cell

    def record(row: str, track: str, outcome: dict) -> None:
        table[row][track] = outcome
        print(f"{row:<24} {track:<11} {outcome}", flush=True)
        if derived and row == ensemble and "members_mean" in outcome:
            table[single][track] = {
                **outcome["members_mean"],
                "from": f"mean of the {members} members' own scores",
            }
            print(f"{single:<24} {track:<11} {table[single][track]}", flush=True)
        result["seconds"] = round(time.perf_counter() - started, 1)
        write_json(path, result)

    if args.jobs <= 1:
        for row, track, function, kwargs in cells:
            record(row, track, _cell(function, kwargs))
    else:
        load_tensors(every)  # builds the recordings' cache once, before the workers read it
        for row, track, outcome in in_processes(cells, args.jobs, work / "cells"):
            record(row, track, outcome)
    result["complete"] = True
    result["seconds"] = round(time.perf_counter() - started, 1)
    _print(table)
    write_json(path, result)
    print(f"wrote {path}")


# What a resumed table must share with the file it continues: the same settings, rows and tracks.
_RESUME_SAME = (
    "preset", "quick", "members", "max_epochs", "width", "twin_core", "batch_size", "lr", "amp",
    "single_from_ensemble", "rows", "tracks", "mei_steps",
)  # fmt: skip
# ... and what a file written before a setting existed had instead: its default then (the learning
# rate was the recipe's at every batch size).
_RESUME_DEFAULTS = {"mei_steps": MEI_STEPS, "lr": TrainConfig.lr}


def resume_mismatch(earlier: dict, result: dict) -> list[str]:
    """Why `earlier` (a result file) cannot be continued by the run that will write `result`: its
    settings, or its data (the oracle row: the simulation's test-tier ceilings); [] if it can be."""
    if earlier.get("benchmark") != "accuracy":
        return [f"benchmark {earlier.get('benchmark')!r}, not 'accuracy'"]
    why = [
        f"{k} {earlier.get(k, _RESUME_DEFAULTS.get(k))!r} here {result[k]!r}"
        for k in _RESUME_SAME
        if earlier.get(k, _RESUME_DEFAULTS.get(k)) != result[k]
    ]
    if str(earlier.get("device", "")).split(":")[0] != result["device"].split(":")[0]:
        why.append(f"device {earlier.get('device')!r} here {result['device']!r}")
    before, now = earlier.get("table", {}).get("oracle", {}), result["table"]["oracle"]
    for track, scores in now.items():
        old = before.get(track, {})
        if any(
            not np.isclose(old.get(k, np.nan), scores[k], rtol=0, atol=1e-6) for k in sensorium_scores(scores)
        ):
            why.append(f"other data: the {track} oracle differs")
    return why


def keep_cells(earlier: dict, table: dict) -> list[str]:
    """Copy into `table` the finished cells of `earlier`'s table (not failed ones, not the oracle, which
    is recomputed); returns them as 'row / track'."""
    kept = []
    for row, cells in earlier.get("table", {}).items():
        if row == "oracle" or row not in table:
            continue
        for track, cell in cells.items():
            if cell and "error" not in cell:
                table[row][track] = cell
                kept.append(f"{row} / {track}")
    return kept


def _cell(function, kwargs: dict) -> dict:
    """One cell of the table; a failure becomes {"error": ...} so that the other cells go on."""
    try:
        return function(**kwargs)
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:4000]}


def in_processes(cells: list, jobs: int, folder: Path) -> Iterator[tuple[str, str, dict]]:
    """Each cell in a process of its own, `jobs` at a time; yields (row, track, outcome) as they end.

    Interrupted, the running cells are stopped (SIGTERM; each stops its own `twin train` children)
    and waited for, so that nothing keeps training after us.
    """
    folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    spawn = multiprocessing.get_context("spawn")  # CUDA does not survive fork
    pending = list(enumerate(cells))
    running: dict = {}  # process -> (row, track, outcome file)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                i, (row, track, function, kwargs) = pending.pop(0)
                out = folder / f"{i}.json"
                out.unlink(missing_ok=True)  # an earlier table's in a kept --work folder is not this cell's
                process = spawn.Process(target=_cell_process, args=(function, kwargs, threads, out))
                process.start()
                running[process] = (row, track, out)
            multiprocessing.connection.wait([p.sentinel for p in running])
            for process in [p for p in running if not p.is_alive()]:
                process.join()
                row, track, out = running.pop(process)
                if out.is_file():
                    yield row, track, json.loads(out.read_text())
                else:
                    yield row, track, {"error": f"the cell's process exited with status {process.exitcode}"}
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.join(timeout=90)
            if process.is_alive():
                process.kill()


def _cell_process(function, kwargs: dict, threads: int, out: Path) -> None:
    import torch

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through train_members, which stops its children

    signal.signal(signal.SIGTERM, stop)
    torch.set_num_threads(threads)
    np.seterr(all="ignore")
    write_json(out, _cell(function, kwargs))


def _print(table: dict) -> None:
    head = f"{'model':<24}" + "".join(f" | {t:^26}" for t in TRACKS)
    print("\n" + head)
    print(f"{'':<24}" + " | single    avg     FEVE     " * len(TRACKS))
    for row, tracks in table.items():
        cells = []
        for track in TRACKS:
            s = tracks.get(track)
            if s is None or "error" in s:
                cells.append(f" | {'-' if s is None else 'failed':^26}")
                continue
            feve = "-" if s.get("feve") is None else f"{s['feve']:.3f}"
            cells.append(
                f" | {s['single_trial_correlation']:.3f}    {s['correlation_to_average']:.3f}   {feve:>6}  "
            )
        print(f"{row:<24}" + "".join(cells))
    print(
        "\nin silico, against the simulated neurons: receptive-field centre error (px, median) / "
        "preferred-orientation error (degrees, median) / MEI alignment with the true receptive field "
        "(median)"
    )
    for row, tracks in table.items():
        cells = []
        for track in TRACKS:
            found = (tracks.get(track) or {}).get("in_silico") or {}
            text = " / ".join(
                "-" if found.get(k) is None else f"{found[k]:.{d}f}"
                for k, d in (
                    ("center_error_px_median", 2),
                    ("orientation_error_deg_median", 1),
                    ("mei_filter_alignment_median", 2),
                )
            )
            cells.append(f" | {text:^26}")
        if any(c.strip(" |") != "- / - / -" for c in cells):
            print(f"{row:<24}" + "".join(cells))
    sys.stdout.flush()


if __name__ == "__main__":
    np.seterr(all="ignore")
    interrupt_on_sigterm()
    main()
