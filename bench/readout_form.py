"""Benchmark: is a trained model's distance from the oracle in its core or in its readout?

The run's core is frozen and its features of every trial of one recording computed once; that
recording's readout is then trained again, starting from the trained one, in each form below, for the
same epochs with the run's loss (Poisson + its correlation weight), keeping the epoch of best validation
correlation. A form that scores clearly above the retrained readout as it is would be worth building into
the model; none doing so says that the features, i.e. the core, limit it. On a simulated recording the
image-averaged test predictions are also correlated with the neurons' noise-free responses, and
`--targets truth` trains every form on those noise-free responses instead of the recorded ones (the
validation epoch kept by correlation with them): what the frozen features can express at all, with no
trial noise and no shortage of trials in the way, i.e. the core's ceiling for any readout of that form.

  as trained  the model's readout (Gaussian position, features . weights + bias, ELU + 1)
  output      + a monotone output nonlinearity per neuron, y + sum_k w_k tau_k log(1 + y / tau_k) with
              tau_k 0.25, 1, 4 (responses are standardized) and w_k >= 0 starting at softplus(-6) =
              0.0025: within 1% of the identity
  divisive    + a divisive gain from a second readout of the same features at the trained positions,
              y / (1 + softplus(v . f + e)), starting near y (v = 0, e = -4)
  layers      the readout reads every core layer, concatenated (neuralpredictors' stack=None); the last
              layer's weights start as trained, the others at 0
  free        each neuron's position is its own parameter (no map from cortical coordinates, which keeps
              positions smooth over the cortex), starting at the trained positions

    python bench/readout_form.py --run runs/cnn --data sim/static90001-1-1-... [--epochs 12 --lr 0.003]
        [--forms "as trained,free"] [--targets truth]

Image-only models (no shifter, behaviour channels or modulator). The features stay in memory as float16:
trials x channels x H' x W' x 2 bytes, times the layers for `layers` (5.6 GB for 7,000 trials of the
baseline's 4 layers of 64 channels on 28 x 56). Prints a table; writes
bench/results/readout_form-<run>-<data key>.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the packages beside bench/
    sys.path.insert(0, str(ROOT))

from simulate import machine  # noqa: E402

from twin.atomic import write_json  # noqa: E402

FORMS = ("as trained", "output", "divisive", "layers", "free")
TAUS = (0.25, 1.0, 4.0)


def _modules():  # torch is imported by main() only, after the arguments are checked
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Output(nn.Module):
        """y + sum_k w_k tau_k log(1 + y / tau_k) per neuron, w >= 0: monotone, near the identity at start."""

        def __init__(self, n: int):
            super().__init__()
            self.theta = nn.Parameter(torch.full((len(TAUS), n), -6.0))
            self.register_buffer("tau", torch.tensor(TAUS)[:, None, None])  # (K, 1, 1)

        def forward(self, y):
            w = F.softplus(self.theta)[:, None]  # (K, 1, N)
            return y + (w * self.tau * torch.log1p(y[None] / self.tau)).sum(0)  # (B, N)

    return torch, F, Output


def build_form(form: str, trained, coordinates, shape: tuple[int, ...]):
    """The readout of `form` (a torch module: forward(features, training) -> responses), starting from the
    `trained` readout: its predictions ("divisive": / (1 + softplus(-4)); "output": + 0.0025 of the
    compressive terms), on features of
    `shape` (C, H', W') whose last trained.features.shape[1] channels are what the model's readout read."""
    torch, F, Output = _modules()
    from training.models.readout import GaussianReadout

    class Form(torch.nn.Module):
        def __init__(self):
            super().__init__()
            last = trained.features.shape[1]
            self.channels = slice(0 if form == "layers" else shape[0] - last, shape[0])
            width = shape[0] - self.channels.start
            mapped = trained.mu_transform is not None  # a run trained with free positions has no map
            free = form == "free" or not mapped
            self.readout = GaussianReadout(
                (width, *shape[1:]),
                None if free else np.asarray(coordinates),
                replace(trained.config, offset_weight=None) if free else trained.config,
                n_neurons=trained.n_neurons,
            )
            state = copy.deepcopy(trained.state_dict())
            if free and mapped:  # the map's positions become each neuron's own
                state = {k: state[k] for k in ("sigma", "features", "bias")} | {"_mu": trained.mu().detach()}
            weights = torch.zeros(self.readout.n_neurons, width)
            weights[:, -last:] = state["features"]  # the other layers' weights start at 0
            self.readout.load_state_dict({**state, "features": weights})
            self.output = Output(self.readout.n_neurons) if form == "output" else None
            self.gain = copy.deepcopy(self.readout) if form == "divisive" else None
            if self.gain is not None:  # reads at the trained readout's positions, kept
                with torch.no_grad():
                    self.gain.features.zero_()
                    self.gain.bias.fill_(-4.0)
                for name, parameter in self.gain.named_parameters():
                    parameter.requires_grad_(name in ("features", "bias"))

        def forward(self, x, training: bool):
            x = x[:, self.channels].float()
            y = F.elu(self.readout.train(training)(x)) + 1
            if self.gain is not None:
                y = y / (1 + F.softplus(self.gain.eval()(x)))
            return self.output(y) if self.output is not None else y

    return Form()


def _training(run: Path) -> dict | None:
    """How long member 0 trained (its epochs, the best one): a core trained briefly limits every form."""
    path = run / "members" / "member-0" / "training.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    return {"epochs": done.get("epochs"), "best_epoch": done.get("best_epoch")}


def measure(
    run: Path,
    data: Path,
    simulation: Path | None,
    forms: list[str],
    epochs: int,
    lr: float,
    targets: str = "responses",
) -> dict:
    import torch

    from training.run import load_members, load_tensors
    from training.trainer import correlation_loss, poisson_loss
    from twin import metrics
    from twin.data import load_recording
    from twin.data.simulation import GroundTruth
    from twin.errors import InvalidInput

    description, nets = load_members(run)
    net, config = nets[0], nets[0].config
    if config.shifter or config.behavior_channels or config.modulator:
        raise InvalidInput(
            f"run: {run} is a {config.name!r} model with behaviour inputs; expected image-only"
        )
    recording = load_recording(data, progress=False)
    key = recording.data_key
    if key not in net.readouts:
        raise InvalidInput(f"data: {key} is not a recording of run {run}; expected one of {net.data_keys}")
    d = load_tensors([data], with_held_out=True, resize=config.input_resize)[key]
    weight = float(description["train"].get("correlation_weight") or 0.0)
    every_layer = "layers" in forms
    with torch.no_grad():
        chunks = []
        for s in range(0, len(d.images), 128):
            layers = net.core.layer_outputs(net.inputs(d.images[s : s + 128]))
            chunks.append(torch.cat(layers if every_layer else layers[-1:], 1).half())
        features = torch.cat(chunks)  # (trials, C [x layers], H', W')
    train, validation, test = (d.indices(t) for t in ("train", "validation", "test"))
    responses = d.responses
    if targets == "truth" and simulation is None:
        raise InvalidInput("targets: 'truth' needs the recording's simulation; expected --simulation")
    fitted, test_truth = responses, None  # test_truth: (test trials, neurons), the noise-free responses
    if simulation is not None:
        ground_truth = GroundTruth.load(simulation, key)

        def truth_of(idx: np.ndarray) -> np.ndarray:
            parts = [
                ground_truth(np.asarray(recording.images[idx[s : s + 500]])) for s in range(0, len(idx), 500)
            ]
            return np.concatenate(parts).astype(np.float32)

        if targets == "truth":  # every trial's: trained to, and selected by, them
            truth = truth_of(np.arange(len(d.images)))
            fitted = torch.from_numpy(truth / d.preprocessing.response_std)  # standardized as recorded ones
            test_truth = truth[test]
        else:
            test_truth = truth_of(test)

    def fit(form: str) -> dict:
        torch.manual_seed(0)
        model = build_form(form, net.readouts[key], description["coordinates"][key], features.shape[1:])
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

        def predict(idx: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.cat(
                    [model(features[idx[s : s + 256]], False) for s in range(0, len(idx), 256)]
                ).numpy()

        best, kept, started = -np.inf, None, time.perf_counter()
        for epoch in range(epochs):
            order = train[np.random.default_rng(epoch).permutation(len(train))]
            for s in range(0, len(order), 128):
                batch = order[s : s + 128]
                p, r = model(features[batch], True), fitted[batch]
                loss = poisson_loss(p, r) + model.readout.regularizer()
                if weight:
                    loss = loss + weight * correlation_loss(p, r)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            score = float(metrics.correlation(fitted[validation].numpy(), predict(validation)).mean())
            if score > best:
                best, kept = score, copy.deepcopy(model.state_dict())
        model.load_state_dict(kept)
        predicted = predict(test)
        scores = metrics.score(responses[test].numpy(), predicted, d.image_ids[test])
        out = {
            "validation_correlation": round(best, 4),
            "single_trial_correlation": round(scores.single_trial_correlation, 4),
            "correlation_to_average": round(scores.correlation_to_average, 4),
            "feve": None if scores.feve is None else round(scores.feve, 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        if test_truth is not None:
            ids, first = np.unique(d.image_ids[test], return_index=True)
            averaged = np.stack([predicted[d.image_ids[test] == i].mean(0) for i in ids])
            truth_corr = metrics.correlation(test_truth[first], averaged)  # (neurons,)
            out["correlation_with_truth"] = round(float(truth_corr.mean()), 4)
        return out

    return {
        "data_key": key,
        "model": config.name,
        "member": 0,
        "member_training": _training(run),
        "neurons": int(responses.shape[1]),
        "trials": {"train": len(train), "validation": len(validation), "test": len(test)},
        "features": list(features.shape[1:]),
        "correlation_weight": weight,
        "targets": targets,
        "forms": {form: fit(form) for form in forms},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished training run")
    parser.add_argument("--data", type=Path, required=True, help="one of its recordings")
    parser.add_argument("--simulation", type=Path, default=None, help="its simulation (default: found)")
    parser.add_argument("--forms", default=",".join(FORMS), help=f"some of {', '.join(FORMS)}")
    parser.add_argument(
        "--targets",
        choices=("responses", "truth"),
        default="responses",
        help="train the readouts on the recorded responses or on the simulation's noise-free ones",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    if not forms or any(f not in FORMS for f in forms) or len(set(forms)) < len(forms):
        parser.error(f"--forms: {args.forms!r}; expected distinct names among {', '.join(FORMS)}")
    if args.epochs < 1:
        parser.error(f"--epochs: {args.epochs}; expected >= 1")
    if not args.lr > 0:
        parser.error(f"--lr: {args.lr}; expected > 0")
    if not (args.run / "run.json").is_file():
        parser.error(f"--run: {args.run} is not a training run (no run.json)")
    simulation = args.simulation
    if simulation is None and (args.data.parent / "ground_truth").is_dir():
        simulation = args.data.parent
    if args.targets == "truth" and simulation is None:
        parser.error("--targets truth: no simulation found beside --data; expected --simulation DIR")
    row = measure(args.run, args.data, simulation, forms, args.epochs, args.lr, args.targets)
    result = {"benchmark": "readout_form", "run": args.run.name, "machine": machine(), "epochs": args.epochs}
    result |= {"lr": args.lr, **row}
    suffix = "-truth" if args.targets == "truth" else ""
    out = (
        args.out
        or ROOT / "bench" / "results" / f"readout_form-{args.run.name}-{row['data_key']}{suffix}.json"
    )
    write_json(out, result)
    truth = simulation is not None
    print(
        f"{row['model']} {row['data_key']}: readout trained again on the frozen core ({args.epochs} epochs, "
        f"to the {'noise-free' if args.targets == 'truth' else 'recorded'} responses)"
    )
    print(
        f"  {'form':12s} {'validation':>10s} {'single':>8s} {'average':>8s} {'FEVE':>7s}"
        + ("   truth" if truth else "")
    )
    for form, r in row["forms"].items():
        feve = "-" if r["feve"] is None else f"{r['feve']:.4f}"
        line = f"  {form:12s} {r['validation_correlation']:10.4f} {r['single_trial_correlation']:8.4f}"
        line += f" {r['correlation_to_average']:8.4f} {feve:>7s}"
        print(line + (f" {r['correlation_with_truth']:7.4f}" if truth else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
