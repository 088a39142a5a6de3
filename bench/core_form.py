"""Benchmark: which core? Variants of a model trained alike on one recording, scored on its test tier.

Each variant is a registered model with some of its core's fields changed; every variant trains one
model per seed with the same recipe (the trainer's: early stopping on validation correlation, at most
--epochs) on the same recording, and is scored on that recording's test tier with the three SENSORIUM
metrics. On a simulated recording the image-averaged test predictions are also correlated with the
neurons' noise-free responses (mean over neurons), the figure that the trial noise does not cap. What it
answers cheaply: the headline table (bench/accuracy.py) pre-trains and ensembles every variant it is
given, this trains one model per variant and seed.

    python bench/core_form.py --data sim/static90001-1-1-... --epochs 15 --amp --jobs 2 \\
        --variant twin --variant twin:normalization=false \\
        --variant "twin:kind=cnn,layers=4,hidden_kernel=7,depthwise=true,dropout=0"

A variant is NAME or NAME:FIELD=VALUE,... (NAME a registered image-only model; FIELDs of its core, of
its readout, or input_gradients, input_centered, input_resize, correlation_weight, correlation_rounds;
values read as JSON; the core's in_channels follows the inputs), or a model .json file (the format
`run.json` stores, which `twin train --model` takes); its label is the text given, a file's its name
without .json. Variants run in processes, --jobs at a time, the CPU's threads shared among them. Runs
live in --work (default: a temporary folder), named after what they train: a later call with the same
--work reuses the finished ones and continues an interrupted one from its last checkpoint. Prints a
table; writes bench/results/core_form-<data key>-<device>.json (or --out), each run's test scores beside its
epochs, seconds per epoch and validation correlation after every epoch (from its log).

`--targets truth` (a simulated recording) trains every variant on a copy of the recording whose responses
are the neurons' noise-free expected responses to each trial's image (written once into --work, with its
own statistics): what the architecture can express from these images when neither trial noise nor
behaviour is in the way, as readout_form.py's `--targets truth` asks of a frozen core's readout. Scored on
the copy's test tier, single-trial correlation and correlation to average are both the correlation with
the truth; FEVE, not defined without noise, is left out of the printed table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import field_changes, in_processes, members_training, sensorium_scores, trained_once
from simulate import device_info, interrupt_on_sigterm, machine

from training.models import CoreConfig, ModelConfig, ReadoutConfig, get_config
from training.trainer import TrainConfig
from twin.atomic import write_json
from twin.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent


# What a variant may change besides its core's fields (in_channels excepted: it follows the inputs).
CORE_FIELDS = frozenset(f.name for f in fields(CoreConfig)) - {"in_channels"}
READOUT_FIELDS = frozenset(f.name for f in fields(ReadoutConfig))
INPUT_FIELDS = frozenset(
    {"input_gradients", "input_centered", "input_resize", "correlation_weight", "correlation_rounds"}
)


def variant_config(spec: str) -> ModelConfig:
    """NAME[:FIELD=VALUE,...] -> the registered model NAME with those fields of its core, its readout, its
    inputs or its loss (INPUT_FIELDS) changed, the core's in_channels following the inputs; a .json file:
    the model configuration in it (as `twin train --model` takes it)."""
    if spec.endswith(".json"):
        try:
            config = ModelConfig.from_dict(json.loads(Path(spec).read_text()))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read a model configuration ({exc})") from None
        return _image_only(config, spec)
    name, _, text = spec.partition(":")
    config = _image_only(get_config(name.strip()), name.strip())
    try:
        changes = field_changes(text, CORE_FIELDS | READOUT_FIELDS | INPUT_FIELDS)
        flags = {k: changes.pop(k) for k in ("input_centered", "input_gradients") if k in changes}
        config = config.with_inputs(**flags)  # the core's in_channels follows the inputs
        core = {k: v for k, v in changes.items() if k in CORE_FIELDS}
        readout = {k: v for k, v in changes.items() if k in READOUT_FIELDS}
        inputs = {k: v for k, v in changes.items() if k in INPUT_FIELDS}
        return replace(
            config,
            **inputs,
            core=replace(config.core, **core),
            readout=replace(config.readout, **readout),
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _image_only(config: ModelConfig, name: str) -> ModelConfig:
    if config.behavior_channels or config.shifter or config.modulator:
        raise InvalidInput(f"{name!r} uses behaviour; expected an image-only model")
    return config


def truth_correlation(run: Path, key: str, data: Path, simulation: Path, device: str) -> dict:
    """The correlation between the run's predictions of the test images and their noise-free responses:
    its mean over neurons, and its mean over each quarter of the neurons by signal-to-noise ratio (low to
    high; SNR = variance of the truth over the test images / mean Gamma noise variance E[truth^2] / k):
    what a change buys the neurons that are hard to place and what it buys the clear ones."""
    from training.torch_twin import TorchTwin
    from twin import metrics
    from twin.data import load_recording
    from twin.data.simulation import GroundTruth

    recording = load_recording(data)
    test = np.flatnonzero(recording.tiers == "test")
    _, first = np.unique(recording.image_ids[test], return_index=True)
    images = np.asarray(recording.images[test[first]])  # (images, [1,] H, W), each test image once
    ground_truth = GroundTruth.load(simulation, key)
    truth = ground_truth(images).astype(np.float64)
    predicted, _ = TorchTwin(run, key, device=device).predict(images)
    rho = metrics.correlation(truth, predicted)
    snr = truth.var(0) / (np.square(truth).mean(0) / ground_truth.population.noise_shape)
    edges = np.quantile(snr, [0, 0.25, 0.5, 0.75, 1])
    quarter = np.digitize(snr, edges[1:-1])  # 0 (lowest) .. 3 (highest), by the inner edges
    return {
        "correlation_with_truth": float(rho.mean()),
        "correlation_with_truth_by_snr_quartile": [float(rho[quarter == q].mean()) for q in range(4)],
        "snr_quartile_edges": [round(float(e), 4) for e in edges],
    }


def truth_recording(data: Path, simulation: Path, folder: Path) -> Path:
    """`data` with every trial's responses replaced by its neurons' noise-free expected responses to the
    trial's image, at the session's mean behaviour with the eye at rest (what the image-only variants can
    predict, and what truth_correlation scores against); written once, atomically, as `folder/<data's
    name>` and reused. Images, behaviour, tiers and neurons are the recording's; statistics the copy's own."""
    from twin.data import load_recording
    from twin.data.simulation import GroundTruth
    from twin.data.writer import write_recording

    recording = load_recording(data)
    target = folder / Path(recording.source or data).name
    if target.is_dir():
        return target
    ground_truth = GroundTruth.load(simulation, recording.data_key)
    if ground_truth.n_neurons != recording.n_neurons:
        raise InvalidInput(
            f"{ground_truth.n_neurons} neurons for {recording.data_key}; the recording has "
            f"{recording.n_neurons}: expected the simulation that wrote --data"
        )
    truth = ground_truth(np.asarray(recording.images))  # float32; it works through the images in chunks
    write_recording(replace(recording, responses=truth), target, progress=False)
    return target


def train_variant(
    model: ModelConfig, data: Path, config: TrainConfig, work: Path, simulation: Path | None
) -> dict:
    """Train (or find) one model of `model` on `data`; its test scores, training and truth correlation."""
    run, reused, continued = trained_once(model, [data], 1, config, work, nproc=1)
    (key,) = json.loads((run / "run.json").read_text())["recordings"]
    scores = json.loads((run / "metrics.json").read_text())
    training = json.loads((run / "members" / "member-0" / "training.json").read_text())
    out = {
        "data_key": key,
        **sensorium_scores(scores["test"][key]["ensemble"]),
        "validation_correlation": scores["validation_correlation"]["ensemble"],
        **members_training(run),
        "best_epoch": training["best_epoch"],
        "core_parameters": _core_parameters(model),
        "run": {"name": run.name, "reused": reused, "continued": continued},
    }
    if simulation is not None:
        out |= truth_correlation(run, key, data, simulation, config.device)
    return out


def _core_parameters(model: ModelConfig) -> int:
    from training.models.core import Core

    return sum(p.numel() for p in Core(model.core).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="one recording (a `twin simulate` folder's)")
    parser.add_argument(
        "--variant", action="append", default=None, help="NAME[:FIELD=VALUE,...] or a model .json; repeat"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    parser.add_argument("--epochs", type=int, default=200, help="epoch cap (default 200)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast of the forward pass")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once (default 1)")
    parser.add_argument("--simulation", type=Path, default=None, help="its simulation (default: found)")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: removed)")
    parser.add_argument(
        "--targets",
        choices=("responses", "truth"),
        default="responses",
        help="train on the recorded responses (default) or on the neurons' noise-free responses",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variant or ["twin"]
    labels = [Path(v).stem if v.endswith(".json") else v for v in variants]
    if len(set(labels)) < len(labels):
        parser.error(f"--variant: {labels}; expected distinct variants (a file's label is its name)")
    models = {}
    for spec, label in zip(variants, labels, strict=True):
        try:
            models[label] = variant_config(spec)
        except InvalidInput as exc:
            parser.error(f"--variant: {spec!r}: {exc}")
    try:
        seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        parser.error(f"--seeds: {args.seeds!r}; expected comma-separated integers >= 0")
    if args.epochs < 1:
        parser.error(f"--epochs: {args.epochs}; expected >= 1")
    if args.jobs < 1:
        parser.error(f"--jobs: {args.jobs}; expected >= 1")
    if not (args.data / "meta").is_dir() and args.data.suffix != ".zip":
        parser.error(f"--data: {args.data} is not a recording (no meta/ folder)")
    simulation = args.simulation
    if simulation is None and (args.data.parent / "ground_truth").is_dir():
        simulation = args.data.parent
    if args.targets == "truth" and simulation is None:
        parser.error("--targets truth: no simulation found beside --data; expected --simulation DIR")
    work = args.work or Path(tempfile.mkdtemp(prefix="core_form-"))
    try:
        data = args.data
        if args.targets == "truth":
            try:
                data = truth_recording(args.data, simulation, work / "truth")
            except InvalidInput as exc:
                parser.error(f"--simulation: {exc}")
        cells = [
            (
                spec,
                seed,
                train_variant,
                {
                    "model": model,
                    "data": data,
                    "config": TrainConfig(
                        max_epochs=args.epochs, device=args.device, amp=args.amp, seed=seed
                    ),
                    "work": work / "runs",
                    "simulation": simulation,
                },
            )
            for spec, model in models.items()
            for seed in seeds
        ]
        outcomes: dict[str, dict[str, dict]] = {spec: {} for spec in models}
        for spec, seed, outcome in in_processes(cells, args.jobs, work / "cells"):
            outcomes[spec][str(seed)] = outcome
            print(f"{spec} seed {seed}: {outcome.get('error') or 'done'}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    keys = {o["data_key"] for v in outcomes.values() for o in v.values() if "data_key" in o}
    result = {
        "benchmark": "core_form",
        "machine": {**machine(), **device_info(args.device)},
        "data": str(args.data),
        "data_key": keys.pop() if len(keys) == 1 else None,
        "targets": args.targets,
        "epochs": args.epochs,
        "amp": args.amp,
        "jobs": args.jobs,
        "seeds": seeds,
        "variants": {spec: {"model": models[spec].to_dict(), "seeds": outcomes[spec]} for spec in models},
    }
    tag = result["machine"].get("gpu", "cpu").replace(" ", "_")
    suffix = "-truth" if args.targets == "truth" else ""
    name = f"core_form-{result['data_key'] or args.data.name}-{tag}{suffix}.json"
    out = args.out or ROOT / "bench" / "results" / name
    write_json(out, result)
    _print(result, simulation is not None, feve=args.targets == "responses")
    print(f"wrote {out}")


def _print(result: dict, truth: bool, feve: bool = True) -> None:
    print(
        f"\n{'variant':48s} {'seed':>4s} {'epochs':>6s} {'valid.':>7s}"
        + f" {'single':>7s} {'average':>7s}"
        + (f" {'FEVE':>7s}" if feve else "")
        + ("   truth  by SNR quartile, low to high" if truth else "")
    )
    for spec, v in result["variants"].items():
        for seed, r in v["seeds"].items():
            if "error" in r:
                print(f"{spec[:48]:48s} {seed:>4s}  {r['error'][:60]}")
                continue
            line = f"{spec[:48]:48s} {seed:>4s} {r['epochs'][0]:6d} {r['validation_correlation']:7.4f}"
            line += f" {r['single_trial_correlation']:7.4f} {r['correlation_to_average']:7.4f}"
            line += f" {r['feve']:7.4f}" if feve else ""
            if truth:
                line += f" {r['correlation_with_truth']:7.4f} "
                line += " ".join(f"{q:.3f}" for q in r["correlation_with_truth_by_snr_quartile"])
            print(line)


if __name__ == "__main__":
    interrupt_on_sigterm()
    main()
