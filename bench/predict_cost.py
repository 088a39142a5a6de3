"""Benchmark: how fast a registered model predicts on one device: what scoring a run costs there.

A run scores its ensemble after training (validation predictions for the member selection, test
predictions for metrics.json). This measures the eval-mode forward pass of a freshly built model (the
registered config at full width, `--neurons` readout neurons, images at the models' 36 x 64) in
images/s, on `--device` with `--threads` torch threads, so that the cost of scoring N predictions there
can be read off.

    python bench/predict_cost.py                         # twin, CPU, 2 threads
    python bench/predict_cost.py --model cnn --threads 3

Writes bench/results/predict_cost-<model>-<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate import device_info, machine, positive_or

from training.data import MODEL_IMAGE_SIZE
from training.models import RecordingShape, available, build, get_config
from training.trainer import check_device
from twin.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def measure(model: str, neurons: int, batch: int, repeats: int, threads: int, device: str) -> dict:
    """Median images/s of `repeats` timed forward passes of `batch` images (after one warm-up)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_config(model)
    config = replace(config, readout=replace(config.readout, position_init="random"))  # no data needed
    rng = np.random.default_rng(0)
    shape = RecordingShape(n_neurons=neurons, coordinates=rng.normal(size=(neurons, 3)).astype(np.float32))
    net = build(config, {"k": shape}).to(device).eval()
    images = torch.rand(batch, 1, *MODEL_IMAGE_SIZE, device=device)
    extra = {}
    if config.behavior_channels or config.modulator:
        extra["behavior"] = torch.zeros(batch, 3, device=device)
    if config.shifter:
        extra["pupil_center"] = torch.zeros(batch, 2, device=device)
    seconds = []
    with torch.no_grad():
        net(images, "k", **extra)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            net(images, "k", **extra)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
    median = float(np.median(seconds))
    return {"seconds_median": round(median, 4), "images_per_second": round(batch / median, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="twin", help=f"a registered model: {', '.join(available())}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument("--neurons", type=int, default=None, help="readout neurons (default 1000)")
    parser.add_argument("--batch", type=int, default=None, help="images per forward pass (default 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes (default 3)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    threads = positive_or(parser, "--threads", args.threads, 2)
    neurons = positive_or(parser, "--neurons", args.neurons, 1000)
    batch = positive_or(parser, "--batch", args.batch, 256)
    repeats = positive_or(parser, "--repeats", args.repeats, 3)
    if args.model not in available():
        parser.error(f"--model: {args.model!r} is not registered; expected one of {available()}")
    try:
        check_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    timing = measure(args.model, neurons, batch, repeats, threads, args.device)  # sets the threads first
    result = {
        "benchmark": "predict_cost",
        "model": args.model,
        "neurons": neurons,
        "batch": batch,
        "threads": threads,
        "device": args.device,
        "machine": {**machine(), **device_info(args.device)},
        "date": time.strftime("%Y-%m-%d"),
        **timing,
    }
    path = args.out or RESULTS / f"predict_cost-{args.model}-{args.device.split(':')[0]}.json"
    write_json(path, result)
    print(f"{args.model} on {args.device}, {threads} threads: {result['images_per_second']} images/s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
