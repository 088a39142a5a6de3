"""A training run: recordings in, a run directory of trained members out, and its evaluation.

RUN_DIR/
  run.json                  model and training configuration, recordings, members
  members/member-<i>/       checkpoint.pt, best.pt, log.jsonl, metrics.json of one member
  metrics.json              validation (and test, when responses are available) metrics per member

Members differ in seed; member 0 keeps the recordings' own train/validation split and the others draw
their own (same sizes), so an ensemble of them sees different validation sets.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from training.data import RecordingTensors
from training.models import ModelConfig, RecordingShape, build, get_config
from training.trainer import BEST, TrainConfig, predict, train
from twin import metrics
from twin.data import Recording, find_held_out, load_held_out, load_recording, restore
from twin.errors import FormatError, InvalidInput

__all__ = ["evaluate", "load_members", "load_tensors", "resolve_model", "train_run"]


def load_tensors(
    paths: list[str | os.PathLike[str]], *, with_held_out: bool = False
) -> dict[str, RecordingTensors]:
    """Recordings as model tensors keyed by data key. Held-out responses restored on request."""
    out: dict[str, RecordingTensors] = {}
    recordings: list[Recording] = []
    for path in paths:
        rec = load_recording(path, progress=False)
        if rec.data_key in out:
            raise InvalidInput(f"data: data key {rec.data_key} given twice ({path})")
        responses = None
        if with_held_out:
            folder = find_held_out(Path(path), rec.data_key)
            if folder is not None:
                responses = restore(rec, load_held_out(folder))
        out[rec.data_key] = RecordingTensors.from_recording(rec, responses)
        recordings.append(rec)
    sizes = {r.data_key: r.image_shape for r in recordings}
    if len({s for s in sizes.values()}) > 1:
        raise InvalidInput(
            f"data: recordings with different image sizes {sizes}; one shared core needs one size"
        )
    return out


def resolve_model(model: str | os.PathLike[str] | ModelConfig) -> ModelConfig:
    """A registered model name, a JSON file of a ModelConfig (as run.json stores it), or a config."""
    if isinstance(model, ModelConfig):
        return model
    path = Path(model)
    if path.suffix == ".json":
        try:
            return ModelConfig.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InvalidInput(f"model: {path} does not exist") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"model: {path} is not a model configuration ({exc})") from None
    return get_config(str(model))


def _check_track(config: ModelConfig, data: dict[str, RecordingTensors]) -> None:
    needs = config.behavior_channels or config.shifter or config.modulator
    for key, d in data.items():
        if needs and not (torch.any(d.behavior != 0) or torch.any(d.pupil_center != 0)):
            raise InvalidInput(
                f"model {config.name!r} uses behaviour, but recording {key} has behaviour and pupil centre "
                "zeroed (image-only track); choose an image-only model"
            )


def _resplit(data: dict[str, RecordingTensors], seed: int) -> dict[str, RecordingTensors]:
    """A copy whose train/validation trials are re-drawn (same counts); held-out tiers untouched."""
    rng = np.random.default_rng([seed, 7])
    out = {}
    for key, d in data.items():
        tiers = d.tiers.copy()
        pool = np.flatnonzero(np.isin(tiers, ("train", "validation")))
        n_val = int(np.sum(tiers == "validation"))
        chosen = rng.choice(pool, n_val, replace=False)
        tiers[pool] = "train"
        tiers[chosen] = "validation"
        out[key] = replace(d, tiers=tiers)
    return out


def _shapes(
    data: dict[str, RecordingTensors], coordinates: dict[str, np.ndarray]
) -> dict[str, RecordingShape]:
    return {
        key: RecordingShape(
            n_neurons=d.n_neurons,
            coordinates=coordinates.get(key),
            mean_response=d.responses[d.indices("train")].mean(0).cpu().numpy(),
        )
        for key, d in data.items()
    }


def train_run(
    paths: list[str | os.PathLike[str]],
    model: str | ModelConfig,
    out: str | os.PathLike[str],
    *,
    members: int = 1,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train `members` models on the recordings at `paths`; returns the run's metrics."""
    if members < 1:
        raise InvalidInput(f"members: {members}; expected >= 1")
    config = config or TrainConfig()
    model_config = resolve_model(model)
    run = Path(out)
    recordings = [load_recording(p, progress=False) for p in paths]
    coordinates = {r.data_key: np.asarray(r.cell_motor_coordinates) for r in recordings}
    data = load_tensors(paths)
    _check_track(model_config, data)
    run.mkdir(parents=True, exist_ok=True)
    description = {
        "model": model_config.to_dict(),
        "train": asdict(config),
        "recordings": {k: str(p) for k, p in zip(data, paths, strict=True)},
        "preprocessing": {k: d.preprocessing.to_dict() for k, d in data.items()},
        "coordinates": {k: v.tolist() for k, v in coordinates.items()},
        "members": members,
    }
    _write_json(run / "run.json", description)
    results = {}
    for i in range(members):
        member_data = data if i == 0 else _resplit(data, config.seed + i)
        torch.manual_seed(config.seed + i)
        net = build(model_config, _shapes(member_data, coordinates)).to(config.device)
        folder = run / "members" / f"member-{i}"
        outcome = train(
            net,
            {k: d.to(config.device) for k, d in member_data.items()},
            replace(config, seed=config.seed + i),
            folder,
            resume=resume,
            progress=progress,
        )
        results[f"member-{i}"] = {
            "best_epoch": outcome.best_epoch,
            "epochs": outcome.epochs,
            "validation_correlation": outcome.best_validation_correlation,
        }
        _write_json(folder / "metrics.json", results[f"member-{i}"])
    _write_json(run / "metrics.json", {"members": results})
    return results


def load_members(run_dir: str | os.PathLike[str], device: str = "cpu") -> tuple[dict, list[torch.nn.Module]]:
    """The run's description and its members' best weights, in eval mode."""
    run = Path(run_dir)
    try:
        description = json.loads((run / "run.json").read_text())
    except FileNotFoundError:
        raise FormatError(f"{run}: not a training run (no run.json)") from None
    config = ModelConfig.from_dict(description["model"])
    coordinates = {k: np.asarray(v, np.float32) for k, v in description["coordinates"].items()}
    shapes = {
        key: RecordingShape(n_neurons=len(c), coordinates=c, mean_response=None)
        for key, c in coordinates.items()
    }
    nets = []
    for i in range(description["members"]):
        best = run / "members" / f"member-{i}" / BEST
        if not best.is_file():
            raise FormatError(f"{best}: missing; the member has not finished an epoch")
        net = build(config, shapes)
        net.load_state_dict(torch.load(best, weights_only=False)["model"])
        nets.append(net.to(device).eval())
    return description, nets


def evaluate(
    run_dir: str | os.PathLike[str], paths: list[str | os.PathLike[str]], tier: str = "test"
) -> dict[str, dict]:
    """SENSORIUM metrics of the run's ensemble (mean of members) on `tier` of each recording.

    Uses the held-out responses (found beside the recording) where the recording ships them zeroed.
    """
    _, nets = load_members(run_dir)
    data = load_tensors(paths, with_held_out=True)
    out = {}
    for key, d in data.items():
        idx = d.indices(tier)
        responses = d.responses[idx].numpy()
        if not np.any(responses):
            raise InvalidInput(
                f"tier: the {tier} responses of {key} are zeroed on disk and no held-out responses were found"
            )
        prediction = np.mean([predict(net, d, idx) for net in nets], axis=0)
        scores = metrics.score(responses, prediction, d.image_ids[idx])
        out[key] = {"tier": tier, "members": len(nets), **scores.to_dict()}
    return out


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)
