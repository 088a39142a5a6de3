"""Benchmark: the model table on the simulated mouse, both tracks, test tier, against the oracle.

Rows: LN, our CNN, the reference CNN (neuralpredictors 0.3.0, same data, same recipe), our `twin` model
(one member), a `twin` ensemble, and the ground-truth oracle. Columns per track: single-trial
correlation, correlation to average, FEVE. SENSORIUM track = the image-only recording (models without
behaviour, trained with one shared core on every recording of the preset); SENSORIUM+ track = the
behaviour recording (the behaviour variants: cnn_behavior, twin_behavior, reference with behaviour
channels and shifter). Held-out test responses are read from the simulation's held_out/ folder.

    python bench/accuracy.py                      # small preset: a GPU job (about 10 minutes on one H100)
    python bench/accuracy.py --quick              # tiny preset, small budgets: checks the pipeline on CPU
    python bench/accuracy.py --device cuda --amp  # bf16 on a GPU

Prints a table and writes bench/results/accuracy-<preset>-<device>.json.
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


def run_ours(
    name: str, model: str, paths: list[Path], target: Path, members: int, config: TrainConfig, work: Path
) -> dict:
    started = time.perf_counter()
    run = work / f"{name}-{model}"
    train_run(paths, model, run, members=members, config=config, progress=False)
    scores = evaluate(run, [target], "test")
    return {**_scores(next(iter(scores.values()))), "seconds": round(time.perf_counter() - started, 1)}


def run_reference(
    paths: list[Path], target: Path, behavior: bool, epochs: int, device: str, work: Path
) -> dict:
    """The neuralpredictors baseline, trained with its own loaders and loop, early-stopped on validation."""
    import reference

    started = time.perf_counter()
    loaders = reference.reference_loaders(
        paths,
        include_behavior=behavior,
        include_eye_position=behavior,
        cuda=device.startswith("cuda"),
        workdir=work / "reference-data",
    )
    model = reference.build_reference_model(loaders, shifter=behavior).to(device)
    reference.train_early_stopped(model, loaders, max_epochs=epochs, device=device)
    key = next(k for k in loaders["test"] if str(target.name).startswith(f"static{k}"))
    _, prediction = reference.predict_reference(model, loaders["test"][key], key, device)
    truth = load_tensors([target], with_held_out=True)[key]
    idx = truth.indices("test")
    scores = metrics.score(truth.responses[idx].numpy(), prediction, truth.image_ids[idx])
    return {**_scores(scores.to_dict()), "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="simulated preset (default: small; tiny with --quick)")
    parser.add_argument("--data", type=Path, default=None, help="an existing `twin simulate` output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last (CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few epochs: a pipeline check")
    parser.add_argument("--members", type=int, default=None, help="ensemble size (default 5; 2 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap (default 200; 3 with --quick)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the neuralpredictors row")
    args = parser.parse_args()
    preset = args.preset or ("tiny" if args.quick else "small")
    members = args.members or (2 if args.quick else 5)
    epochs = args.epochs or (3 if args.quick else 200)
    work = Path(tempfile.mkdtemp(prefix="twin-accuracy-"))
    os.environ.setdefault("TWIN_CACHE_DIR", str(work / "cache"))
    data = args.data or work / preset
    if args.data is None:
        simulate(preset, data, seed=0, progress=False)
    roles = _recordings(data)
    every = [r["path"] for r in roles.values()]
    config = TrainConfig(max_epochs=epochs, device=args.device, amp=args.amp, channels_last=args.amp, seed=0)
    twin_config = replace(config, correlation_weight=1.0)
    plan = {
        # row: {track: (model, training recordings, config, members)}
        "LN": {"sensorium": ("ln", every, config, 1), "sensorium+": ("ln", every, config, 1)},
        "CNN (ours)": {
            "sensorium": ("cnn", every, config, 1),
            "sensorium+": ("cnn_behavior", [roles["behavior"]["path"]], config, 1),
        },
        "twin (1 model)": {
            "sensorium": ("twin", every, twin_config, 1),
            "sensorium+": ("twin_behavior", [roles["behavior"]["path"]], twin_config, 1),
        },
        f"twin ensemble ({members})": {
            "sensorium": ("twin", every, twin_config, members),
            "sensorium+": ("twin_behavior", [roles["behavior"]["path"]], twin_config, members),
        },
    }
    table: dict[str, dict] = {}
    for row, tracks in plan.items():
        table[row] = {}
        for track, (model, paths, cfg, n) in tracks.items():
            target = roles[TRACKS[track]]["path"]
            table[row][track] = run_ours(row.split()[0], model, paths, target, n, cfg, work / track)
            print(f"{row:<22} {track:<11} {table[row][track]}", flush=True)
    if not args.skip_reference:
        table["CNN (reference)"] = {
            "sensorium": run_reference(every, roles["image_only"]["path"], False, epochs, args.device, work),
            "sensorium+": run_reference(
                [roles["behavior"]["path"]], roles["behavior"]["path"], True, epochs, args.device, work
            ),
        }
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
    head = f"{'model':<22}" + "".join(f" | {t:^26}" for t in TRACKS)
    print("\n" + head)
    print(f"{'':<22}" + " | single    avg     FEVE     " * len(TRACKS))
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
        print(f"{row:<22}" + "".join(cells))
    sys.stdout.flush()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
