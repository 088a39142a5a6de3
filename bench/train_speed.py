"""Benchmark: training images/second of our trainer against the SENSORIUM 2022 reference, end to end.

Same recordings (a simulated preset, written in the SENSORIUM layout), same architecture (the `cnn`
baseline: 4-layer core, 64 channels, full Gaussian readouts), batch 128, one batch per recording per
optimizer step, same machine, same process. Both sides include their data path in every timed step:
- ours: training/data.py's resident preprocessed tensors and batch schedule, and trainer.train's inner
  step (forward, Poisson loss scaled by sqrt(train / batch), regularizer, backward, Adam step);
- reference: bench/reference.py, i.e. neuralpredictors 0.3.0's FileTreeDataset + transforms + DataLoader,
  its Stacked2dCore / FullGaussian2d / FiringRateEncoder and sensorium's standard_trainer loop.
Variants of ours, as `twin train` runs them: `ours` (the default: model and images in channels_last
memory format, fp32), `ours_nchw` (`--no-channels-last`), `ours_bf16` (`--amp`: also bf16 autocast of
the forward pass). The trainer's inner step is run here directly, the same operations in the same order
(like the trainer it never waits for the device within a step), so that steps can be timed apart; the
reference runs as its users run it (NCHW, fp32).

Steps of the variants are interleaved (`--steps-per-round` steps of each per round, the clock read and
the device synchronized between rounds) so that load from other processes falls on all of them alike;
warm-up rounds are excluded. One-time setup (reading and preprocessing the
recordings; building the datasets and the model) is reported apart.

Then "at equal accuracy": on the `tiny` preset, both models train for the same number of epochs (ours
with training.trainer.train itself, in fp32 and with bf16 autocast; the reference with its loop) and
report validation correlation
(twin.metrics.correlation on both), so a reader can see that neither side is broken. That phase is not
timed; both models run in channels_last there to keep it short on CPUs (the same arithmetic).

Usage: python bench/train_speed.py [--preset small] [--steps 5] [--warmup 1] [--epochs 5]
       [--device cpu|cuda] [--variants ours,ours_nchw,ours_bf16] [--data DIR] [--tiny-data DIR] [--out FILE]
Needs the `bench` extra (neuralpredictors 0.3.0, scikit-image). Prints a table and writes
bench/results/train_speed-<preset>-<N>cpu.json (or -<gpu>.json on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/ and the packages beside it
    sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("ours", "ours_nchw", "ours_bf16")


def simulate(preset: str, out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "twin.cli", "simulate", "--preset", preset, "--out", str(out), "--force"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def recording_folders(root: Path) -> list[Path]:
    folders = sorted(root.glob("static*"))
    if not folders:
        raise SystemExit(f"{root}: no recording folders (static*); simulate one with `twin simulate`")
    return folders


# ---------------------------------------------------------------------------------------------------
# Ours


def load_ours(folders: list[Path], device: str) -> tuple[dict, dict]:
    """Recordings as resident model tensors (training.run.load_tensors) and the model's shapes."""
    from training.models import RecordingShape
    from training.run import load_tensors
    from twin.data import load_recording

    data = load_tensors(folders)
    shapes = {}
    for folder in folders:
        rec = load_recording(folder, progress=False)
        d = data[rec.data_key]
        shapes[rec.data_key] = RecordingShape(
            n_neurons=d.n_neurons,
            coordinates=np.asarray(rec.cell_motor_coordinates),
            mean_response=d.responses[d.indices("train")].mean(0).numpy(),
        )
    return {k: d.to(device) for k, d in data.items()}, shapes


def build_ours(shapes: dict, device: str, channels_last: bool):
    import torch

    from training.models import build

    model = build("cnn", shapes).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def our_steps(
    model, data: dict, *, batch_size: int, lr: float, device: str, channels_last: bool, bf16: bool, seed: int
) -> Iterator[tuple[int, float]]:
    """training.trainer.train's inner step, endlessly: yields (images, data seconds) per optimizer step.

    Like the trainer, it never waits for the device: data seconds are the host's time to issue a batch's
    gather, and the caller synchronizes where it reads a clock.
    """
    import torch

    device_type = "cuda" if str(device).startswith("cuda") else "cpu"

    from training.data import batches
    from training.trainer import poisson_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # as the trainer
    scale = {k: float(np.sqrt(len(d.indices("train")) / batch_size)) for k, d in data.items()}
    rng = np.random.default_rng(seed)
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    while True:
        for step in batches(data, "train", batch_size, rng):
            optimizer.zero_grad(set_to_none=True)
            images, data_seconds = 0, 0.0
            for key, idx in step:
                fetch = time.perf_counter()
                batch = data[key].batch(idx)
                x = batch["images"]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                data_seconds += time.perf_counter() - fetch
                with autocast:  # the forward pass only, as the trainer's _loss does
                    prediction = model(
                        x, key, behavior=batch["behavior"], pupil_center=batch["pupil_center"]
                    ).float()
                loss = scale[key] * poisson_loss(prediction, batch["responses"]) + model.regularizer(key)
                loss.backward()
                total += loss.detach().double()  # as the trainer sums it (on the device)
                images += len(idx)
            optimizer.step()
            yield images, data_seconds


# ---------------------------------------------------------------------------------------------------
# The timed comparison


def time_interleaved(
    runners: dict[str, Iterator],
    rounds: int,
    warmup: int,
    steps_per_round: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[dict]]:
    """`steps_per_round` steps of every runner per round, timed from one `sync()` to the next, so that a
    runner that never waits for its device within a step is timed as it trains; the first `warmup`
    rounds are dropped."""
    records: dict[str, list[dict]] = {name: [] for name in runners}
    for r in range(warmup + rounds):
        for name, runner in runners.items():
            sync()
            start = time.perf_counter()
            images, data_seconds = 0, 0.0
            for _ in range(steps_per_round):
                step_images, step_data_seconds = next(runner)
                images, data_seconds = images + step_images, data_seconds + step_data_seconds
            sync()
            seconds = time.perf_counter() - start
            if r >= warmup:
                records[name].append({"images": images, "seconds": seconds, "data_seconds": data_seconds})
        print(f"  round {r + 1}/{warmup + rounds}" + (" (warm-up)" if r < warmup else ""), flush=True)
    return records


def summarize(records: list[dict], steps_per_round: int) -> dict:
    images = sum(r["images"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    data_seconds = sum(r["data_seconds"] for r in records)
    steps = len(records) * steps_per_round
    # Robust to a round slowed by other processes: a median round's seconds per step.
    median = float(np.median([r["seconds"] for r in records])) / steps_per_round
    return {
        "steps": steps,
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 2),
        "images_per_second_median_step": round(images / steps / median, 2),
        "seconds_per_step_median": round(median, 4),
        "data_seconds_per_step": round(data_seconds / steps, 4),
        "data_share": round(data_seconds / seconds, 4),
        "round_seconds": [round(r["seconds"], 4) for r in records],
    }


def speed(args: argparse.Namespace, folders: list[Path], work: Path) -> dict:
    import torch

    from bench.reference import build_reference_model, reference_loaders, reference_steps

    result: dict = {}
    cuda = args.device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as training.trainer.train sets it (for both sides here)
    start = time.perf_counter()
    data, shapes = load_ours(folders, args.device)
    ours_setup = time.perf_counter() - start
    runners: dict[str, Iterator] = {}
    for name in args.variants:
        torch.manual_seed(args.seed)
        model = build_ours(shapes, args.device, channels_last=name != "ours_nchw")
        runners[name] = our_steps(
            model,
            data,
            batch_size=args.batch_size,
            lr=0.009,
            device=args.device,
            channels_last=name != "ours_nchw",
            bf16=name == "ours_bf16",
            seed=args.seed,
        )

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    loaders = reference_loaders(folders, args.batch_size, cuda=cuda, workdir=work / "reference-speed")
    reference = build_reference_model(loaders, seed=args.seed)
    reference_setup = time.perf_counter() - start
    steps = reference_steps(reference, loaders, lr=0.009, device=args.device)
    runners["reference"] = ((s.images, s.data_seconds) for s in steps)

    k = args.steps_per_round
    print(
        f"timing {args.steps} steps (+{args.warmup} warm-up) of {', '.join(runners)}, {k} per round",
        flush=True,
    )
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    warmup_rounds = -(-args.warmup // k)  # every warm-up step, in whole rounds
    records = time_interleaved(runners, args.steps // k, warmup_rounds, k, sync)
    result.update({name: summarize(r, k) for name, r in records.items()})
    reference = result["reference"]
    for name in args.variants:
        row = result[name]
        row["speedup_vs_reference"] = round(row["images_per_second"] / reference["images_per_second"], 2)
        row["speedup_vs_reference_median_step"] = round(
            row["images_per_second_median_step"] / reference["images_per_second_median_step"], 2
        )
    result["setup_seconds"] = {"ours": round(ours_setup, 2), "reference": round(reference_setup, 2)}
    result["recordings"] = {
        k: {"train": len(d.indices("train")), "neurons": d.n_neurons} for k, d in data.items()
    }
    return result


# ---------------------------------------------------------------------------------------------------
# Equal accuracy


def accuracy(args: argparse.Namespace, folders: list[Path], work: Path) -> dict:
    import torch

    from bench.reference import (
        build_reference_model,
        reference_loaders,
        reference_validation_correlation,
        train_reference,
    )
    from training.trainer import TrainConfig, train

    data, shapes = load_ours(folders, args.device)
    ours: dict[str, dict] = {}
    for name, amp in (("ours", False), ("ours_bf16", True)):
        torch.manual_seed(args.seed)
        model = build_ours(shapes, args.device, channels_last=True)
        config = TrainConfig(
            batch_size=args.batch_size, max_epochs=args.epochs, seed=args.seed, device=args.device, amp=amp
        )
        start = time.perf_counter()
        outcome = train(model, data, config, work / f"{name}-run", progress=False)
        ours[name] = {
            "validation_correlation_per_epoch": [
                round(h["validation_correlation"], 4) for h in outcome.history
            ],
            "best": round(outcome.best_validation_correlation, 4),
            "seconds": round(time.perf_counter() - start, 1),
        }

    loaders = reference_loaders(
        folders, args.batch_size, cuda=args.device == "cuda", workdir=work / "reference-accuracy"
    )
    reference = build_reference_model(loaders, seed=args.seed).to(memory_format=torch.channels_last)
    history: list[float] = []
    start = time.perf_counter()
    train_reference(
        reference,
        loaders,
        epochs=args.epochs,
        device=args.device,
        on_epoch=lambda _: history.append(
            round(reference_validation_correlation(reference, loaders, device=args.device), 4)
        ),
    )
    reference_seconds = time.perf_counter() - start
    return {
        "preset": args.accuracy_preset,
        "epochs": args.epochs,
        **ours,
        "reference": {
            "validation_correlation_per_epoch": history,
            "best": max(history),
            "seconds": round(reference_seconds, 1),
        },
    }


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="preset of the timed comparison (default small)")
    parser.add_argument("--data", type=Path, default=None, help="an existing simulation of --preset")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument(
        "--steps-per-round",
        type=int,
        default=None,
        help="steps of a variant between two clock reads, with the device synchronized only there "
        "(default 1 on CPU, 10 on CUDA: a GPU step is shorter than the wait for the device)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--variants", default=None, help=f"ours' variants, comma-separated, of {VARIANTS}")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the accuracy check (0: skip it)")
    parser.add_argument("--accuracy-preset", default="tiny")
    parser.add_argument("--tiny-data", type=Path, default=None, help="an existing simulation of it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="the result file (default bench/results/...)")
    args = parser.parse_args()
    args.variants = (args.variants or ",".join(VARIANTS)).split(",")
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    if args.steps < 1 or args.warmup < 0 or args.epochs < 0:
        parser.error("--steps >= 1, --warmup >= 0 and --epochs >= 0 expected")
    if args.steps_per_round is None:
        args.steps_per_round = 10 if args.device == "cuda" else 1
    if not 1 <= args.steps_per_round <= args.steps or args.steps % args.steps_per_round:
        parser.error(
            f"--steps-per-round: {args.steps_per_round}; expected a divisor of --steps ({args.steps})"
        )

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="twin-train-speed-"))
    os.environ.setdefault("TWIN_CACHE_DIR", str(work / "cache"))  # before twin reads it
    warnings.filterwarnings("ignore", category=UserWarning, module="neuralpredictors")
    from bench.simulate import device_info, machine
    from twin.atomic import write_json

    try:
        data_root = args.data or simulate(args.preset, work / args.preset)
        print(f"speed: preset {args.preset}, device {args.device}, batch {args.batch_size}", flush=True)
        timed = speed(args, recording_folders(data_root), work)
        checked = None
        if args.epochs:
            tiny_root = args.tiny_data or (
                data_root
                if args.accuracy_preset == args.preset
                else simulate(args.accuracy_preset, work / args.accuracy_preset)
            )
            print(f"accuracy: {args.epochs} epochs on preset {args.accuracy_preset}", flush=True)
            checked = accuracy(args, recording_folders(tiny_root), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "train_speed",
        "preset": args.preset,
        "machine": {**machine(), **device_info(args.device)},
        # Other processes on the machine slow the steps of both sides (interleaved, so alike).
        "load_average_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d"),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "steps_per_round": args.steps_per_round,
        "warmup": args.warmup,
        "speed": timed,
        "accuracy": checked,
    }
    print_table(result)
    tag = f"{os.cpu_count()}cpu" if args.device == "cpu" else result["machine"]["gpu"].replace(" ", "_")
    path = args.out or RESULTS / f"train_speed-{args.preset}-{tag}.json"
    write_json(path, result)
    print(f"wrote {path}")


def print_table(result: dict) -> None:
    timed = result["speed"]
    names = [k for k in (*VARIANTS, "reference") if k in timed]
    print(
        f"\ntraining speed, preset {result['preset']}, batch {result['batch_size']} per recording, "
        f"{result['steps']} timed steps ({result['machine']['device']}, {result['machine']['cores']} cores)"
    )
    print(
        f"  {'':14} {'images/s':>9} {'vs reference':>13} {'median s/step':>14} {'(vs reference)':>15} "
        f"{'data s/step':>12}"
    )
    for name in names:
        row = timed[name]
        ratio = f"{row.get('speedup_vs_reference', 1.0):.2f}x"
        median_ratio = f"{row.get('speedup_vs_reference_median_step', 1.0):.2f}x"
        print(
            f"  {name:14} {row['images_per_second']:9.1f} {ratio:>13} {row['seconds_per_step_median']:14.2f} "
            f"{median_ratio:>15} {row['data_seconds_per_step']:12.3f}"
        )
    setup = timed["setup_seconds"]
    print(f"  one-time setup: ours {setup['ours']} s, reference {setup['reference']} s")
    load = result["load_average_1min"]
    print(f"  load average (1 min): {load['start']} at start, {load['end']} at end")
    checked = result["accuracy"]
    if checked:
        print(f"validation correlation after {checked['epochs']} epochs on preset {checked['preset']}:")
        for name in ("ours", "ours_bf16", "reference"):
            side = checked[name]
            print(f"  {name:14} {side['validation_correlation_per_epoch']}  ({side['seconds']} s)")


if __name__ == "__main__":
    from bench.simulate import interrupt_on_sigterm

    interrupt_on_sigterm()
    main()
