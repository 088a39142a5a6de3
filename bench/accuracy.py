"""Benchmark: the model table on the simulated mouse, both tracks, test tier, against the oracle.

Rows: LN, our CNN, the reference CNN (neuralpredictors 0.3.0, same data, same recipe), our `twin` model
(one member), a `twin` ensemble, and the ground-truth oracle. Columns per track: single-trial
correlation, correlation to average, FEVE. SENSORIUM track = the image-only recording (models without
behaviour, trained with one shared core on every recording of the preset); SENSORIUM+ track = the
behaviour recording (the behaviour variants: cnn_behavior, twin_behavior, reference with behaviour
channels and shifter). Held-out test responses are read from the simulation's held_out/ folder.

`twin` rows pre-train one core on every recording the model can use and fine-tune it on the track's
recording, when the preset has more than one such recording (the winners' recipe); `--ablation` adds
rows that switch off one ingredient of `twin` / `twin_behavior` at a time (single models).

    python bench/accuracy.py --device cuda --amp      # small preset: the GPU job (one H100/H200)
    python bench/accuracy.py --quick                  # tiny preset, 16-channel models: CPU pipeline check
    python bench/accuracy.py --quick --ablation       # ... with the ablation rows

Prints a table and writes bench/results/accuracy-<preset or quick>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate import machine

from training.models import ModelConfig, get_config
from training.run import evaluate, load_tensors, train_run
from training.trainer import TrainConfig
from twin import metrics
from twin.data import simulate

RESULTS = Path(__file__).resolve().parent / "results"
TRACKS = {"sensorium": "image_only", "sensorium+": "behavior"}


def _recordings(data: Path) -> dict[str, dict]:
    summary = json.loads((data / "simulation.json").read_text())
    return {r["role"]: {**r, "path": data / r["folder"]} for r in summary["recordings"]}


def _scores(s: dict) -> dict:
    return {k: s[k] for k in ("single_trial_correlation", "correlation_to_average", "feve")}


def model_config(name: str, width: int | None, **changes) -> ModelConfig:
    """A registered config, its core narrowed to `width` channels (CPU budgets), with field changes."""
    config = get_config(name)
    core = config.core if width is None else replace(config.core, channels=width)
    core = replace(core, **changes.pop("core", {}))
    return replace(config, core=core, **changes)


def run_ours(
    name: str,
    model: ModelConfig,
    paths: list[Path],
    target: Path,
    members: int,
    config: TrainConfig,
    work: Path,
    pretrain: list[Path] | None = None,
) -> dict:
    """Train (pre-train on `pretrain`, fine-tune on `paths`); the ensemble's scores on target's test tier."""
    started = time.perf_counter()
    run = work / name
    init_from = None
    if pretrain:
        init_from = work / f"{name}-pretrained"
        train_run(pretrain, model, init_from, members=members, config=config, progress=False)
    train_run(paths, model, run, members=members, config=config, progress=False, init_from=init_from)
    scores = evaluate(run, [target], "test")
    return {
        **_scores(next(iter(scores.values()))),
        "pretrained_on": len(pretrain or []),
        "seconds": round(time.perf_counter() - started, 1),
    }


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
    outcome = reference.train_early_stopped(model, loaders, max_epochs=config.max_epochs, device=device)
    key = next(k for k in loaders["test"] if str(target.name).startswith(f"static{k}"))
    _, prediction = reference.predict_reference(model, loaders["test"][key], key, device)
    truth = load_tensors([target], with_held_out=True)[key]
    idx = truth.indices("test")
    scores = metrics.score(truth.responses[idx].numpy(), prediction, truth.image_ids[idx])
    return {
        **_scores(scores.to_dict()),
        "epochs": outcome["epochs"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _ablations(width: int | None) -> dict[str, dict[str, tuple[ModelConfig, float, bool]]]:
    """Rows: twin minus one ingredient -> {track: (model config, correlation weight, pre-train)}."""
    full = {"sensorium": model_config("twin", width), "sensorium+": model_config("twin_behavior", width)}
    baseline_core = {"kind": "cnn", "hidden_kernel": 7, "depthwise": True, "dropout": 0.0, "residual": False}
    rows: dict[str, dict[str, tuple[ModelConfig, float, bool]]] = {
        "- pre-training": {t: (c, 1.0, False) for t, c in full.items()},
        "- correlation loss": {t: (c, 0.0, True) for t, c in full.items()},
        "- dropout": {t: (replace(c, core=replace(c.core, dropout=0.0)), 1.0, True) for t, c in full.items()},
        "- residual core": {
            t: (replace(c, core=replace(c.core, **baseline_core)), 1.0, True) for t, c in full.items()
        },
        "- extra input channels": {
            t: (
                replace(
                    c,
                    input_gradients=False,
                    input_centered=False,
                    core=replace(c.core, in_channels=c.core.in_channels - 3),
                ),
                1.0,
                True,
            )
            for t, c in full.items()
        },
    }
    behavior = full["sensorium+"]
    rows["- modulator"] = {"sensorium+": (replace(behavior, modulator=False), 1.0, True)}
    rows["- shifter"] = {"sensorium+": (replace(behavior, shifter=False), 1.0, True)}
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
    parser.add_argument("--ablation", action="store_true", help="add rows without one twin ingredient each")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the neuralpredictors row")
    args = parser.parse_args()
    preset = args.preset or ("tiny" if args.quick else "small")
    members = args.members or (3 if args.quick else 5)
    epochs = args.epochs or (40 if args.quick else 200)
    width = args.width or (16 if args.quick else None)
    batch_size = args.batch_size or (32 if args.quick else 128)
    work = Path(tempfile.mkdtemp(prefix="twin-accuracy-"))
    os.environ.setdefault("TWIN_CACHE_DIR", str(work / "cache"))
    data = args.data or work / preset
    if args.data is None:
        simulate(preset, data, seed=0, progress=False)
    roles = _recordings(data)
    every = [r["path"] for r in roles.values()]
    with_behavior = [r["path"] for r in roles.values() if r["role"] != "image_only"]
    config = TrainConfig(max_epochs=epochs, batch_size=batch_size, device=args.device, amp=args.amp, seed=0)
    twin_config = replace(config, correlation_weight=1.0)
    target = {track: roles[role]["path"] for track, role in TRACKS.items()}
    # Pre-train on every recording the track's model can use, when there is more than the target.
    pretrain = {"sensorium": every, "sensorium+": with_behavior}
    pretrain = {t: (p if len(p) > 1 else None) for t, p in pretrain.items()}
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
                model_config("twin", width),
                [target["sensorium"]],
                twin_config,
                n,
                pretrain["sensorium"],
            ),
            "sensorium+": (
                model_config("twin_behavior", width),
                [target["sensorium+"]],
                twin_config,
                n,
                pretrain["sensorium+"],
            ),
        }
    if args.ablation:
        for row, tracks in _ablations(width).items():
            plan[row] = {
                track: (
                    model,
                    [target[track]] if pre else pretrain[track] or [target[track]],
                    replace(config, correlation_weight=weight),
                    1,
                    pretrain[track] if pre else None,
                )
                for track, (model, weight, pre) in tracks.items()
            }
    table: dict[str, dict] = {}
    for i, (row, tracks) in enumerate(plan.items()):
        table[row] = {}
        for track, (model, paths, cfg, n, pre) in tracks.items():
            table[row][track] = run_ours(
                f"{i}-{track}", model, paths, target[track], n, cfg, work / track, pre
            )
            print(f"{row:<24} {track:<11} {table[row][track]}", flush=True)
    if not args.skip_reference:
        table["CNN (reference)"] = {
            "sensorium": run_reference(every, target["sensorium"], False, config, width, work),
            "sensorium+": run_reference(
                [target["sensorium+"]], target["sensorium+"], True, config, width, work
            ),
        }
        print(f"{'CNN (reference)':<24} {table['CNN (reference)']}", flush=True)
    table["oracle"] = {
        "sensorium": {**roles["image_only"]["ceilings"]["test"]["image_only"]},
        "sensorium+": {**roles["behavior"]["ceilings"]["test"]["with_behavior"]},
    }
    _print(table)
    result = {
        "benchmark": "accuracy",
        "preset": preset,
        "quick": args.quick,
        "members": members,
        "max_epochs": epochs,
        "width": width,
        "batch_size": batch_size,
        "device": args.device,
        "amp": args.amp,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "table": table,
    }
    RESULTS.mkdir(exist_ok=True)
    tag = "quick" if args.quick else preset
    path = RESULTS / f"accuracy-{tag}-{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def _print(table: dict) -> None:
    head = f"{'model':<24}" + "".join(f" | {t:^26}" for t in TRACKS)
    print("\n" + head)
    print(f"{'':<24}" + " | single    avg     FEVE     " * len(TRACKS))
    for row, tracks in table.items():
        cells = []
        for track in TRACKS:
            s = tracks.get(track)
            if s is None:
                cells.append(f" | {'-':^26}")
                continue
            feve = "-" if s.get("feve") is None else f"{s['feve']:.3f}"
            cells.append(
                f" | {s['single_trial_correlation']:.3f}    {s['correlation_to_average']:.3f}   {feve:>6}  "
            )
        print(f"{row:<24}" + "".join(cells))
    sys.stdout.flush()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
