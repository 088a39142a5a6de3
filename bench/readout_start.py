"""Benchmark: where the readout starts, and whether the model learns from there.

The Gaussian readout has to find each neuron's position in the feature map. neuralpredictors starts it
from a random map of cortical coordinates to positions (`position_init="random"`, the baselines); `twin`
starts it at receptive-field centres estimated from the training trials (`"data"`, training.rf_centers).

Estimates (on every recording of the simulation): the estimated centres' distance from the simulated
neurons' true centres, the clarity of real vs trial-shuffled responses, and the distance of the readout's
starting positions (the map of cortical coordinates fitted to the estimates) from the truth, beside a
random start's.
Training (--train): `twin` (--width channels, --epochs cap, batch 32) trained on one recording alone
(--recording, default the image-only one), once per start and seed (--jobs processes, one thread
each); reported: test-tier single-trial correlation, correlation to average and FEVE, epochs and the
best validation correlation.

    python bench/readout_start.py                          # estimates; simulates `tiny`
    python bench/readout_start.py --train --seeds 0,1,2,3  # about 25 minutes on 2 CPU cores

Writes bench/results/readout_start-<preset>-<N>cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the packages beside bench/
    sys.path.insert(0, str(ROOT))

from simulate import machine  # noqa: E402

from twin.atomic import write_json  # noqa: E402
from twin.data import simulate  # noqa: E402

STARTS = ("random", "data")


def _recordings(sim: Path) -> dict[str, dict]:
    summary = json.loads((sim / "simulation.json").read_text())
    return {r["data_key"]: {**r, "path": sim / r["folder"]} for r in summary["recordings"]}


def _pixels(net, key: str, image_shape: tuple[int, int]) -> np.ndarray:
    """The readout's mean positions as (x, y) input pixels."""
    return net.core.pixel_position(net.readouts[key].mu().detach().numpy(), image_shape)


def estimates(sim: Path, key: str, width: int) -> dict:
    import torch

    from training.models import build, get_config
    from training.rf_centers import estimate_centers
    from training.run import _shapes, load_tensors

    data = load_tensors([_recordings(sim)[key]["path"]], resize="area")[key]
    train = data.indices("train")
    truth = np.load(sim / "ground_truth" / key / "population.npz")["center"]
    started = time.perf_counter()
    centers, clarity = estimate_centers(data.images[train], data.responses[train])
    seconds = time.perf_counter() - started
    order = np.random.default_rng(1).permutation(len(train))
    _, shuffled = estimate_centers(data.images[train], data.responses[train][order])
    error = np.linalg.norm(centers - truth, axis=1)
    out = {
        "data_key": key,
        "trials": len(train),
        "neurons": data.n_neurons,
        "seconds": round(seconds, 2),
        "estimate_error_px": _summary(error),
        "estimate_error_px, clarity > 0.9": _summary(error[clarity > 0.9]),
        "clarity_median": float(np.median(clarity)),
        "clarity_median, shuffled responses": float(np.median(shuffled)),
        "fraction clarity > 0.9": float(np.mean(clarity > 0.9)),
    }
    base = get_config("twin")
    for start in STARTS:
        config = replace(
            base,
            core=replace(base.core, channels=width),
            readout=replace(base.readout, position_init=start),
        )
        torch.manual_seed(0)
        net = build(config, _shapes({key: data}, config))
        out[f"start_error_px, {start}"] = _summary(
            np.linalg.norm(_pixels(net, key, config.image_shape) - truth, axis=1)
        )
    return out


def _summary(error: np.ndarray) -> dict:
    return {
        "median": float(np.median(error)),
        "p90": float(np.percentile(error, 90)),
        "within_2px": float(np.mean(error < 2)),
        "n": len(error),
    }


def train_one(sim: Path, key: str, start: str, seed: int, width: int, epochs: int, work: Path) -> dict:
    """One `twin` trained on recording `key` alone from readout start `start`; its test-tier scores."""
    import torch

    from training.models import get_config
    from training.run import train_run
    from training.trainer import TrainConfig

    torch.set_num_threads(1)
    path = _recordings(sim)[key]["path"]
    base = get_config("twin")
    model = replace(
        base, core=replace(base.core, channels=width), readout=replace(base.readout, position_init=start)
    )
    run = work / f"{start}-{seed}"
    started = time.perf_counter()
    config = TrainConfig(max_epochs=epochs, batch_size=32, seed=seed)
    scores = train_run([path], model, run, config=config, progress=False)["test"][key]["ensemble"]
    trained = json.loads((run / "members" / "member-0" / "training.json").read_text())
    return {
        "start": start,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": trained["epochs"],
        "best_validation_correlation": trained["early_stopping_correlation"],
        **{k: scores[k] for k in ("single_trial_correlation", "correlation_to_average", "feve")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="an existing simulation (default: tiny)")
    parser.add_argument("--recording", default=None, help="data key to train on (default: the image-only)")
    parser.add_argument("--train", action="store_true", help="also train twins from each start (see above)")
    parser.add_argument("--seeds", default="0", help="with --train: comma-separated seeds (default 0)")
    parser.add_argument("--width", type=int, default=16, help="the twin's channels (default 16)")
    parser.add_argument("--epochs", type=int, default=40, help="with --train: the epoch cap (default 40)")
    parser.add_argument("--jobs", type=int, default=2, help="with --train: runs at once (default 2)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        sim = args.data
        if sim is None:
            sim = Path(scratch) / "sim"
            simulate("tiny", sim, progress=False)
        recordings = _recordings(sim)
        preset = json.loads((sim / "simulation.json").read_text())["preset"]
        key = args.recording or next(k for k, r in recordings.items() if r["role"] == "image_only")
        if key not in recordings:
            parser.error(f"--recording: {key!r}; expected one of {sorted(recordings)}")
        result: dict = {
            "benchmark": "readout_start",
            "preset": preset,
            "machine": machine(),
            "estimates": [estimates(sim, k, args.width) for k in recordings],
        }
        if args.train:
            jobs = [
                (sim, key, start, seed, args.width, args.epochs, Path(scratch))
                for seed in seeds
                for start in STARTS
            ]
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
                runs = list(pool.map(train_one, *zip(*jobs, strict=True)))
            result["training"] = {
                "recording": key,
                "model": {"name": "twin", "channels": args.width, "max_epochs": args.epochs, "batch": 32},
                "seeds": seeds,
                "runs": runs,
            }
    out = args.out or ROOT / "bench" / "results" / f"readout_start-{preset}-{os.cpu_count()}cpu.json"
    write_json(out, result)
    for e in result["estimates"]:
        print(
            f"{e['data_key']}: {e['trials']} trials, "
            f"estimate error median {e['estimate_error_px']['median']:.2f} px"
            f" (clarity > 0.9: {e['estimate_error_px, clarity > 0.9']['median']:.2f} px, "
            f"{e['fraction clarity > 0.9']:.0%} of neurons); readout start error median "
            + ", ".join(f"{s} {e[f'start_error_px, {s}']['median']:.2f} px" for s in STARTS)
        )
    for run in result.get("training", {}).get("runs", []):
        print(
            f"  {run['start']:>6} seed {run['seed']}: test single {run['single_trial_correlation']:.3f}, "
            f"average {run['correlation_to_average']:.3f}, FEVE {run['feve']:.3f} ({run['epochs']} epochs)"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
