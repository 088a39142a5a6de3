"""Benchmark: what a model's input resize leaves of the information the simulated neurons use.

Ceiling (default): the simulated neurons see each image area-averaged onto the 36 x 64 retinal grid; a
model sees it resized to the same grid by its preprocessing (twin.resize). Per neuron, the correlation
over images of the true expected responses to the model's input with those to the neurons' own input is
the ceiling that input leaves any model, before training, noise or behaviour: 1 when nothing is lost.
Reported per resize mode (the baselines' bilinear without anti-aliasing, the twin's area averaging, and
torch's anti-aliased bilinear for comparison), overall and by the neurons' preferred period (fine
patterns alias first), on the first --images trials of every recording of a simulation at 144 x 256
(`small`). On the simulated mouse "area" is the neurons' own resampling, so its 1.0 is by construction;
the anti-aliased bilinear row says how much of that any anti-aliasing recovers.

--train: what the resize costs a trained model. `twin` (image-only, --width channels, --epochs cap) is
trained on both recordings of the `tiny` preset simulated with SENSORIUM's 144 x 256 images, once per
resize mode and seed (--jobs processes at once, one thread each); reported: test-tier single-trial
correlation and correlation to average, and the per-neuron correlation of the model with the noise-free
truth on the test images (by period as above).

    python bench/input_resize.py                       # ceiling; simulates `small` in a temporary folder
    python bench/input_resize.py --data sim/ --images 1000
    python bench/input_resize.py --train --seeds 0,1   # trained models, about 30 minutes on 2 CPU cores

Prints a table and writes bench/results/input_resize-<preset>.json, or with --train
bench/results/input_resize-train-<N>cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
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
from twin.data import load_recording, simulate  # noqa: E402
from twin.data.population import GRID  # noqa: E402
from twin.data.presets import PRESETS  # noqa: E402
from twin.data.simulation import GroundTruth  # noqa: E402
from twin.metrics import correlation  # noqa: E402
from twin.resize import RESIZE_MODES, resize  # noqa: E402

PERIOD_BANDS = ((4, 6), (6, 9), (9, 12), (12, 17))  # grid pixels per cycle; the neurons span 4-16


def _torch_antialiased(images: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    return F.interpolate(x, size=GRID, mode="bilinear", align_corners=False, antialias=True)[:, 0].numpy()


def measure(folder: Path, sim: Path, n_images: int) -> dict:
    recording = load_recording(folder, progress=False)
    truth = GroundTruth.load(sim, recording.data_key)
    images = np.asarray(recording.images[:n_images], np.float32)[:, 0]  # (B, H, W) raw pixels
    own = truth(images[:, None])  # the neurons' own input: area-averaged onto the grid
    inputs = {"bilinear": resize(images, GRID, "bilinear"), "area": resize(images, GRID, "area")}
    with contextlib.suppress(ImportError):  # torch is optional: the two modes a twin can have are numpy
        inputs["antialiased"] = _torch_antialiased(images)  # torch: bilinear, antialias=True
    period = truth.population.period
    out = {"data_key": recording.data_key, "image_size": list(recording.image_shape), "images": len(images)}
    for mode, x in inputs.items():
        out[mode] = summary(correlation(truth(x[:, None]), own), period)  # per neuron, over images
    return out


def summary(rho: np.ndarray, period: np.ndarray) -> dict[str, float]:
    """Correlations per neuron (N,): their mean, 10th percentile and mean per band of preferred period."""
    return {"mean": float(rho.mean()), "p10": float(np.percentile(rho, 10)), **_period_bands(rho, period)}


TRAIN_PRESET = replace(PRESETS["tiny"], name="tiny-144x256", image_size=(144, 256))


def _period_bands(rho: np.ndarray, period: np.ndarray) -> dict[str, float]:
    return {f"period {lo}-{hi}": float(rho[(period >= lo) & (period < hi)].mean()) for lo, hi in PERIOD_BANDS}


def train_one(sim: Path, mode: str, seed: int, width: int, epochs: int, work: Path) -> dict:
    """One `twin` trained on every recording of `sim` with input_resize `mode`; its test-tier scores."""
    import torch

    from training.models import get_config
    from training.run import train_run
    from training.torch_twin import TorchTwin
    from training.trainer import TrainConfig

    torch.set_num_threads(1)
    paths = sorted(str(p) for p in sim.glob("static*"))
    base = get_config("twin")
    model = replace(base, name=f"twin-{mode}", core=replace(base.core, channels=width), input_resize=mode)
    run = work / f"{mode}-{seed}"
    started = time.perf_counter()
    summary = train_run(paths, model, run, config=TrainConfig(max_epochs=epochs, seed=seed), progress=False)
    out: dict = {"mode": mode, "seed": seed, "seconds": round(time.perf_counter() - started, 1)}
    scores = {key: test["ensemble"] for key, test in summary["test"].items()}  # as `twin evaluate` scores
    for path in paths:
        recording = load_recording(path, progress=False)
        key = recording.data_key
        truth = GroundTruth.load(sim, key)
        test = np.flatnonzero(np.asarray(recording.tiers) == "test")
        ids = np.asarray(recording.image_ids)[test]
        first = test[np.sort(np.unique(ids, return_index=True)[1])]  # one trial per test image
        expected = np.asarray(truth.expected_responses())[first]
        predicted, _ = TorchTwin(run, key).predict(np.asarray(recording.images[first]))
        rho = correlation(predicted, expected)
        out[key] = {
            "single_trial_correlation": scores[key]["single_trial_correlation"],
            "correlation_to_average": scores[key]["correlation_to_average"],
            "truth_correlation": float(rho.mean()),
            **{f"truth_correlation, {k}": v for k, v in _period_bands(rho, truth.population.period).items()},
        }
    return out


def _simulation(data: Path | None, scratch: str, preset) -> tuple[Path, str]:
    """`data`, or `preset` simulated into `scratch`; with the simulation's preset name."""
    sim = data
    if sim is None:
        sim = Path(scratch) / "sim"
        simulate(preset, sim, progress=False)
    return sim, json.loads((sim / "simulation.json").read_text())["preset"]


def train(args: argparse.Namespace) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        sim, preset = _simulation(args.data, scratch, TRAIN_PRESET)
        jobs = [
            (sim, mode, seed, args.width, args.epochs, Path(scratch))
            for seed in seeds
            for mode in RESIZE_MODES
        ]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            runs = list(pool.map(train_one, *zip(*jobs, strict=True)))
    keys = [k for k in runs[0] if isinstance(runs[0][k], dict)]
    summary = {
        mode: {
            key: {
                metric: float(np.mean([r[key][metric] for r in runs if r["mode"] == mode]))
                for metric in runs[0][key]
            }
            for key in keys
        }
        for mode in RESIZE_MODES
    }
    return {
        "benchmark": "input_resize_train",
        "preset": preset,
        "model": {"name": "twin", "channels": args.width, "max_epochs": args.epochs},
        "seeds": seeds,
        "machine": machine(),
        "runs": runs,
        "mean_over_seeds": summary,
    }


def print_training(result: dict) -> None:
    print(f"twin ({result['model']['channels']} channels) per input resize, {result['preset']}, test tier")
    header = ("resize", "recording", "single", "average", "truth", "truth, period 4-6")
    print("  " + " ".join(f"{h:>{w}}" for h, w in zip(header, (8, 10, 7, 7, 7, 18), strict=True)))
    for mode, keys in result["mean_over_seeds"].items():
        for key, v in keys.items():
            values = (v["single_trial_correlation"], v["correlation_to_average"], v["truth_correlation"])
            shown = " ".join(f"{x:>7.3f}" for x in values)
            print(f"  {mode:>8} {key:>10} {shown} {v['truth_correlation, period 4-6']:>18.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="an existing simulation (default: small)")
    parser.add_argument("--images", type=int, default=600, help="trials per recording (default 600)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--train", action="store_true", help="train twins per resize mode (see above)")
    parser.add_argument("--seeds", default="0", help="with --train: comma-separated seeds (default 0)")
    parser.add_argument("--width", type=int, default=32, help="with --train: the twin's channels")
    parser.add_argument("--epochs", type=int, default=60, help="with --train: the epoch cap")
    parser.add_argument("--jobs", type=int, default=2, help="with --train: runs at once")
    args = parser.parse_args()
    if args.train:
        result = train(args)
        out = args.out or ROOT / "bench" / "results" / f"input_resize-train-{os.cpu_count()}cpu.json"
        write_json(out, result)
        print_training(result)
        print(f"wrote {out}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        sim, preset = _simulation(args.data, scratch, "small")
        rows = [measure(folder, sim, args.images) for folder in sorted(sim.glob("static*"))]
    result = {"benchmark": "input_resize", "preset": preset, "machine": machine(), "recordings": rows}
    out = args.out or ROOT / "bench" / "results" / f"input_resize-{preset}.json"
    write_json(out, result)
    modes = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    print(f"truth through the model's input vs the neurons' own input, correlation per neuron ({preset})")
    for row in rows:
        print(f"  {row['data_key']} ({row['images']} images, {row['image_size'][0]}x{row['image_size'][1]})")
        print_bands(row, "resize", modes, digits=4)
    print(f"wrote {out}")


def print_bands(row: dict, label: str, keys: list[str], digits: int) -> None:
    """One line per key of `row`: its mean, 10th percentile and mean per period band."""
    columns = ["mean", "p10", *(f"period {lo}-{hi}" for lo, hi in PERIOD_BANDS)]
    print("    " + " ".join(f"{c:>12}" for c in [label, *columns]))
    for key in keys:
        print(f"    {key[:12]:>12} " + " ".join(f"{row[key][c]:>12.{digits}f}" for c in columns))


if __name__ == "__main__":
    main()
