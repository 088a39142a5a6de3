"""A training run: recordings in, a run directory of trained members out, and its evaluation.

RUN_DIR/
  run.json                  model and training configuration, recordings, members
  members/member-<i>/       checkpoint.pt, best.pt, log.jsonl, curves.png, metrics.json of one member
  selection.json            the members greedy selection kept
  metrics.json              validation metrics of members and ensemble; test metrics where responses exist

Members differ in seed and in their early-stopping split (see `member_data`); the ensemble is chosen by
greedy selection on the recordings' own validation trials, which no member of an ensemble trains on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from training.data import RecordingTensors
from training.ensemble import greedy_select, mean_and_spread, pooled_correlation
from training.models import ModelConfig, RecordingShape, build, get_config
from training.rf_centers import estimate_centers
from training.trainer import BEST, TrainConfig, check_device, predict, train
from twin import metrics
from twin.atomic import write_json
from twin.data import load_recording, responses_with_held_out
from twin.errors import FormatError, InvalidInput

__all__ = ["evaluate", "load_members", "load_tensors", "resolve_model", "train_run"]


def load_tensors(
    paths: list[str | os.PathLike[str]], *, with_held_out: bool = False, resize: str = "bilinear"
) -> dict[str, RecordingTensors]:
    """Recordings as model tensors keyed by data key. Held-out responses restored on request; images
    reach the model's resolution in `resize` mode (the model config's input_resize)."""
    out: dict[str, RecordingTensors] = {}
    sizes = {}
    for path in paths:
        rec = load_recording(path, progress=False)
        if rec.data_key in out:
            raise InvalidInput(f"data: data key {rec.data_key} given twice ({path})")
        responses = responses_with_held_out(rec, path) if with_held_out else None
        out[rec.data_key] = RecordingTensors.from_recording(rec, responses, resize=resize)
        sizes[rec.data_key] = rec.image_shape
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


SELECTION = "selection"  # the recordings' own validation trials, when an ensemble keeps them for selection


def member_data(data: dict[str, RecordingTensors], member: int, members: int, seed: int):
    """The tiers member `member` trains on.

    A single model follows the reference recipe (early stopping on the validation tier). In an ensemble,
    the validation tier is set aside for member selection and each member draws its own early-stopping
    split of the same size from the train tier, so members differ in split and selection is unbiased.
    """
    if members == 1:
        return data
    rng = np.random.default_rng([seed, member, 7])
    out = {}
    for key, d in data.items():
        tiers = d.tiers.copy()
        n_val = int(np.sum(tiers == "validation"))
        tiers[tiers == "validation"] = SELECTION
        train = np.flatnonzero(tiers == "train")
        if n_val >= len(train):
            raise InvalidInput(
                f"recording {key}: {n_val} validation trials but only {len(train)} train trials"
            )
        tiers[rng.choice(train, n_val, replace=False)] = "validation"
        out[key] = replace(d, tiers=tiers)
    return out


def _shapes(
    data: dict[str, RecordingTensors],
    model_config: ModelConfig,
    device: str = "cpu",
    pretrained: frozenset[str] = frozenset(),
) -> dict[str, RecordingShape]:
    """What the model's readouts are built from: each recording's neurons, from its training trials
    (those of the member: its own early-stopping split is left out); the estimates are computed on
    `device`, except for the `pretrained` keys, whose readouts will be loaded from a pretrained run."""
    out = {}
    for key, d in data.items():
        train = d.indices("train")
        centers = clarity = None
        if model_config.readout.position_init == "data" and key not in pretrained:
            centers, clarity = estimate_centers(d.images[train], d.responses[train], device)
        out[key] = RecordingShape(
            n_neurons=d.n_neurons,
            coordinates=d.coordinates,
            mean_response=d.responses[train].mean(0).cpu().numpy(),
            rf_centers=centers,
            rf_clarity=clarity,
        )
    return out


def _with_readout(keys: Iterable[str], names: Iterable[str]) -> frozenset[str]:
    """The data keys among `keys` that some parameter name in `names` belongs to the readout of."""
    names = list(names)
    return frozenset(k for k in keys if any(name.startswith(f"readouts.{k}.") for name in names))


def pretrained_weights(init_from: str | os.PathLike[str], member: int) -> tuple[dict, str]:
    """The best weights of the pretrained run's member `member` mod its size (its selected members first)."""
    run = Path(init_from)
    try:
        description = json.loads((run / "run.json").read_text())
    except FileNotFoundError:
        raise InvalidInput(f"init_from: {run} is not a training run (no run.json)") from None
    indices = list(range(description["members"]))
    if (run / "selection.json").is_file():
        indices = json.loads((run / "selection.json").read_text())["selected"]
    name = f"member-{indices[member % len(indices)]}"
    best = run / "members" / name / BEST
    if not best.is_file():
        raise InvalidInput(f"init_from: {best} is missing; expected a finished run")
    return torch.load(best, weights_only=False)["model"], name


INPUT_WEIGHT = "core.input_layer.0.weight"  # the core's first conv: (channels, in_channels, k, k)


def initialize_from(net: torch.nn.Module, weights: dict) -> dict:
    """Copy every parameter and buffer whose name and shape match (the shared core, and the readouts,
    shifters and modulators of data keys both runs know); the rest keeps its fresh initialization.

    Pre-training one core on all recordings, then fine-tuning on the target recordings, is what the
    SENSORIUM winners did. A core pre-trained on images alone (every recording can train it, also one
    whose behaviour is zeroed) also starts a model that takes behaviour as extra input channels: those
    come after the image channels, so the pretrained first-layer weights fill the image channels and
    the behaviour channels' weights start at zero (the model starts as the pretrained one and learns
    what behaviour adds). A pretrained run whose core does not fit otherwise (other width, depth or
    image channels) is refused: fine-tuning would then start from scratch without saying so.
    """
    own = net.state_dict()
    loaded = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    inflated = []
    theirs_input, own_input = weights.get(INPUT_WEIGHT), own.get(INPUT_WEIGHT)
    if INPUT_WEIGHT not in loaded and theirs_input is not None and own_input is not None:
        pre, now = tuple(theirs_input.shape), tuple(own_input.shape)
        if len(pre) == 4 and pre[0] == now[0] and pre[2:] == now[2:] and pre[1] < now[1]:
            grown = torch.zeros_like(own_input)
            grown[:, : pre[1]] = theirs_input.to(grown)
            loaded[INPUT_WEIGHT] = grown
            inflated.append(INPUT_WEIGHT)
    core = [k for k in own if k.startswith("core.")]
    missing_core = [k for k in core if k not in loaded]
    if missing_core:
        theirs = {k: tuple(v.shape) for k, v in weights.items() if k in missing_core[:3]}
        raise InvalidInput(
            f"init_from: the pretrained core does not fit this model ({len(missing_core)} of {len(core)} "
            f"core tensors differ, e.g. {missing_core[:3]} pretrained as {theirs}); expected the same core "
            "config"
        )
    net.load_state_dict({**own, **loaded})
    return {
        "loaded": len(loaded),
        "fresh": sorted(k for k in own if k not in loaded),
        "inflated": inflated,
    }


def _rank() -> tuple[int, int]:
    """(rank, world size) under torchrun / torch.distributed, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train_run(
    paths: list[str | os.PathLike[str]],
    model: str | os.PathLike[str] | ModelConfig,
    out: str | os.PathLike[str],
    *,
    members: int = 1,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    init_from: str | os.PathLike[str] | None = None,
) -> dict:
    """Train `members` models on the recordings at `paths`, select the ensemble, write its metrics.

    init_from: a finished run (e.g. one core pre-trained on every recording); member i starts from its
    member i (mod its size) wherever the weights fit (`initialize_from`) and is fine-tuned here.

    Under torch.distributed (torchrun), rank r trains members r, r + world, ...; rank 0 then selects the
    ensemble and scores it. Returns the run's metrics (on rank 0; {} elsewhere).
    """
    if members < 1:
        raise InvalidInput(f"members: {members}; expected >= 1")
    model_config = resolve_model(model)
    config = (config or TrainConfig()).for_model(model_config)  # run.json states the loss used
    check_device(config.device)
    run = Path(out)
    data = load_tensors(paths, resize=model_config.input_resize)
    _check_track(model_config, data)
    rank, world = _rank()
    description = {
        "model": model_config.to_dict(),
        "train": asdict(config),
        "recordings": {k: str(p) for k, p in zip(data, paths, strict=True)},
        "preprocessing": {k: d.preprocessing.to_dict() for k, d in data.items()},
        "coordinates": {k: d.coordinates.tolist() for k, d in data.items()},
        "members": members,
        "init_from": None if init_from is None else str(init_from),
    }
    if resume:
        _check_resumable(run, description)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "run.json", description)
    for i in range(rank, members, world):
        own = member_data(data, i, members, config.seed)
        folder = run / "members" / f"member-{i}"
        start, kept = None, frozenset[str]()
        if init_from is None:
            torch.manual_seed(config.seed + i)
            net = build(model_config, _shapes(own, model_config, config.device))
        else:
            weights, source = pretrained_weights(init_from, i)
            # Readouts the pretrained run has for these data keys are loaded, not started from estimates;
            # if one does not fit after all (other neurons), the model is built again with every estimate.
            for pretrained in (_with_readout(own, weights), frozenset[str]()):
                torch.manual_seed(config.seed + i)
                net = build(model_config, _shapes(own, model_config, config.device, pretrained))
                loaded = initialize_from(net, weights)
                kept = frozenset(own) - _with_readout(own, loaded["fresh"])
                if pretrained <= kept:
                    break
            start = {"init_from": str(init_from), "member": source, **loaded}
        position_start = "estimated" if model_config.readout.position_init == "data" else "random"
        net = net.to(config.device)
        outcome = train(
            net,
            {k: d.to(config.device) for k, d in own.items()},
            replace(config, seed=config.seed + i),
            folder,
            resume=resume,
            progress=progress,
        )
        write_json(
            folder / "training.json",
            {
                "best_epoch": outcome.best_epoch,
                "epochs": outcome.epochs,
                "early_stopping_correlation": outcome.best_validation_correlation,
                "start": start,
                # where each readout's positions started: loaded from the pretrained run, at receptive-field
                # centres estimated from this member's training trials, or at random
                "readout_start": {k: "pretrained" if k in kept else position_start for k in own},
            },
        )
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return {}
    summary = _select_and_score(run, paths, data, members, config.device)
    write_json(run / "metrics.json", summary)
    return summary


# What may differ when a run resumes: where and how fast it runs, and how long it may go on.
RESUME_MAY_CHANGE = ("device", "amp", "channels_last", "max_epochs")


def _check_resumable(run: Path, description: dict) -> None:
    """`resume` continues a run as it was started: refuse another model, recipe, members or recordings."""
    stored_file = run / "run.json"
    if not stored_file.is_file():
        return  # nothing was started there: a fresh run
    stored = json.loads(stored_file.read_text())

    def settings(d: dict) -> dict[str, object]:
        return _flat(
            {
                "model": ModelConfig.from_dict(d["model"]).to_dict(),  # fields added since: their defaults
                "train": {k: v for k, v in d["train"].items() if k not in RESUME_MAY_CHANGE},
                "members": d["members"],
                "data keys": sorted(d["recordings"]),
                "init_from": d.get("init_from"),
            }
        )

    was, now = (
        settings({**stored, "train": {**asdict(TrainConfig()), **stored["train"]}}),
        settings(description),
    )
    differ = [
        f"{name}: was {was.get(name)!r}, now {value!r}"
        for name, value in now.items()
        if was.get(name) != value
    ]
    if differ:
        raise InvalidInput(
            f"resume: {run} was started with other settings ({'; '.join(differ)}); expected the same to "
            f"resume it (only {', '.join(RESUME_MAY_CHANGE)} may change), or a new --out"
        )


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one level of dotted names: {"model.core.channels": 64, ...}."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _select_and_score(
    run: Path, paths, data: dict[str, RecordingTensors], members: int, device: str = "cpu"
) -> dict:
    """Validation metrics of every member, greedy selection, then test metrics where responses exist;
    the members predict on `device` (the one they trained on)."""
    description, nets = load_members(run, device)
    tier = "validation"  # the recordings' own validation trials: never trained on by any ensemble member
    responses = {k: d.responses[d.indices(tier)].numpy() for k, d in data.items()}
    predictions = [{k: predict(net, d, d.indices(tier)) for k, d in data.items()} for net in nets]
    member_scores = {f"member-{i}": pooled_correlation(responses, p) for i, p in enumerate(predictions)}
    selected, path = greedy_select(predictions, responses)
    summary: dict = {
        "validation_correlation": {"members": member_scores, "ensemble": path[-1]},
        "selected": [f"member-{i}" for i in selected],
        "selection_path": path,
    }
    for i in range(members):
        folder = run / "members" / f"member-{i}"
        info = json.loads((folder / "training.json").read_text())
        write_json(folder / "metrics.json", {**info, "validation_correlation": member_scores[f"member-{i}"]})
    write_json(run / "selection.json", {"selected": selected})
    test: dict = {}
    resize = ModelConfig.from_dict(description["model"]).input_resize
    for key, d in load_tensors(paths, with_held_out=True, resize=resize).items():
        if "test" not in d.tiers or not torch.any(d.responses[d.indices("test")] != 0):
            continue
        idx = d.indices("test")
        r = d.responses[idx].numpy()
        per_member = [predict(net, d, idx) for net in nets]
        mean, _ = mean_and_spread([per_member[i] for i in selected])
        test[key] = {
            "ensemble": metrics.score(r, mean, d.image_ids[idx]).to_dict(),
            "members": {
                f"member-{i}": metrics.score(r, p, d.image_ids[idx]).to_dict()
                for i, p in enumerate(per_member)
            },
        }
    summary["test"] = test
    return summary


def selected_members(run_dir: str | os.PathLike[str], description: dict) -> list[int]:
    """Indices of the members the ensemble keeps: the greedy selection's, or all before one was made."""
    selection = Path(run_dir) / "selection.json"
    if selection.is_file():
        return [int(i) for i in json.loads(selection.read_text())["selected"]]
    return list(range(description["members"]))


def load_members(
    run_dir: str | os.PathLike[str], device: str = "cpu", *, selected_only: bool = False
) -> tuple[dict, list[torch.nn.Module]]:
    """The run's description and its members' best weights, in eval mode (the selected ones on request)."""
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
    indices = selected_members(run, description) if selected_only else list(range(description["members"]))
    nets = []
    for i in indices:
        best = run / "members" / f"member-{i}" / BEST
        if not best.is_file():
            raise FormatError(f"{best}: missing; the member has not finished an epoch")
        net = build(config, shapes)
        net.load_state_dict(torch.load(best, weights_only=False)["model"])
        nets.append(net.to(device).eval())
    return description, nets


def evaluate(
    run_dir: str | os.PathLike[str],
    paths: list[str | os.PathLike[str]],
    tier: str = "test",
    device: str = "cpu",
) -> dict[str, dict]:
    """SENSORIUM metrics of the run's ensemble (mean of the selected members) on `tier` of each recording.

    Uses the held-out responses (found beside the recording) where the recording ships them zeroed. The
    ensemble's spread (std across members) is reported as its mean per-neuron uncertainty. The members
    predict on `device`.
    """
    description, nets = load_members(run_dir, check_device(device), selected_only=True)
    data = load_tensors(
        paths, with_held_out=True, resize=ModelConfig.from_dict(description["model"]).input_resize
    )
    out = {}
    for key, d in data.items():
        idx = d.indices(tier)
        responses = d.responses[idx].numpy()
        if not np.any(responses):
            raise InvalidInput(
                f"tier: the {tier} responses of {key} are zeroed on disk and no held-out responses were found"
            )
        mean, spread = mean_and_spread([predict(net, d, idx) for net in nets])
        scores = metrics.score(responses, mean, d.image_ids[idx])
        out[key] = {
            "tier": tier,
            "members": len(nets),
            **scores.to_dict(),
            "mean_member_std": float(spread.mean()),
        }
    return out
