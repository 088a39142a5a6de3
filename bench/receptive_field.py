"""Benchmark: how much of each simulated neuron's response a model unit that sees a w x w window can hold.

A convolutional core's unit at a readout position sees a square of the 36 x 64 model input (its
receptive field: the first kernel plus every later kernel's reach); nothing outside it can move the
prediction. Per neuron, the true expected response to the image with everything outside a w x w window
around the neuron's centre set to mean luminance is correlated over images with its true response to the
whole image (the normalization pools included): the ceiling that window leaves any model, before
training, noise or behaviour (behaviour and eye position are left out: they do not change what is
seen). Reported per window width, overall and by the neurons' preferred period (coarse patterns and
their normalization pools reach furthest), beside the receptive-field widths of the registered cores.

    python bench/receptive_field.py                    # simulates `small`; ~40 minutes on 2 CPU cores
    python bench/receptive_field.py --data sim/ --images 400 --windows 9,13,17,21,25

Prints a table and writes bench/results/receptive_field-<preset>.json (or --out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the packages beside bench/
    sys.path.insert(0, str(ROOT))

from input_resize import _simulation, print_bands, summary  # noqa: E402
from simulate import machine  # noqa: E402

from twin.atomic import write_json  # noqa: E402
from twin.data import load_recording  # noqa: E402
from twin.data.population import GRID, Population, resample_to_grid, to_contrast  # noqa: E402
from twin.data.simulation import GroundTruth  # noqa: E402
from twin.metrics import correlation  # noqa: E402

_CHUNK = 25  # neurons at a time: each sees its own windowed copy of every image


def windowed(population: Population, grid: np.ndarray, width: int) -> np.ndarray:
    """(B, N) normalized drive of contrast images `grid` (B, H, W), each neuron seeing only the width x
    width square around its centre; the rest is at mean luminance (0)."""
    b, h, w = grid.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((b, population.n_neurons), np.float32)
    for start in range(0, population.n_neurons, _CHUNK):
        idx = np.arange(start, min(start + _CHUNK, population.n_neurons))
        sub = population.subset(idx)
        cx, cy = sub.center[:, 0, None, None], sub.center[:, 1, None, None]
        mask = ((np.abs(xx - cx) <= width / 2) & (np.abs(yy - cy) <= width / 2)).astype(np.float32)
        masked = (grid[:, None] * mask[None]).reshape(-1, h, w)  # (B * n, H, W): image b for neuron j
        drive = sub.drive(masked, sub.filters()).reshape(b, len(idx), len(idx))
        out[:, idx] = drive[:, np.arange(len(idx)), np.arange(len(idx))]
    return out


def measure(folder: Path, sim: Path, n_images: int, widths: list[int]) -> dict:
    recording = load_recording(folder, progress=False)
    population = GroundTruth.load(sim, recording.data_key).population
    images = np.asarray(recording.images[:n_images], np.float32)[:, 0]
    grid = to_contrast(resample_to_grid(images))  # what the neurons see: area-averaged onto the grid
    whole = population.drive(grid, population.filters())  # every neuron sees the whole image
    out: dict = {"data_key": recording.data_key, "images": len(images), "neurons": population.n_neurons}
    for width in widths:
        rho = correlation(windowed(population, grid, width), whole)  # (N,) over images
        out[str(width)] = summary(rho, population.period)
    return out


def core_receptive_fields() -> dict[str, int]:
    """Receptive-field width (model pixels) of each registered model's core unit at a readout position."""
    from training.models import available, get_config

    out = {}
    for name in available():
        core = get_config(name).core
        reach = (core.layers - 1) * (core.hidden_kernel - 1) * (2 if core.kind == "resnet" else 1)
        out[name] = core.input_kernel + reach * core.input_stride  # later layers step input_stride pixels
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="an existing simulation (default: small)")
    parser.add_argument("--images", type=int, default=300, help="trials per recording (default 300)")
    parser.add_argument(
        "--windows", default="9,13,17,21,25,29", help="window widths in model pixels (default 9,...,29)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        widths = [int(w) for w in args.windows.split(",")]
    except ValueError:
        parser.error(f"--windows: {args.windows!r}; expected comma-separated integers >= 1")
    if not widths or min(widths) < 1:
        parser.error(f"--windows: {args.windows!r}; expected comma-separated integers >= 1")
    if args.images < 2:
        parser.error(f"--images: {args.images}; expected >= 2")
    with tempfile.TemporaryDirectory() as scratch:
        sim, preset = _simulation(args.data, scratch, "small")
        rows = [measure(folder, sim, args.images, widths) for folder in sorted(sim.glob("static*"))]
    cores = core_receptive_fields()
    result = {
        "benchmark": "receptive_field",
        "preset": preset,
        "grid": list(GRID),
        "machine": machine(),
        "core_receptive_field_px": cores,
        "recordings": rows,
    }
    out = args.out or ROOT / "bench" / "results" / f"receptive_field-{preset}.json"
    write_json(out, result)
    print(f"true response from a w x w window vs from the whole image, correlation per neuron ({preset})")
    for row in rows:
        print(f"  {row['data_key']} ({row['images']} images, {row['neurons']} neurons)")
        print_bands(row, "window (px)", [str(w) for w in widths], digits=3)
    print("  core receptive fields (px): " + ", ".join(f"{k} {v}" for k, v in cores.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
