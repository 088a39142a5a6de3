"""The reference training recipe (SENSORIUM.md §4), resumable.

Adam; Poisson loss scaled by sqrt(train trials / batch) plus the model's regularizers; one batch per
recording per step with gradients accumulated; validation correlation after every epoch. When it has
not improved for `patience` epochs, the best weights are restored and the learning rate is multiplied
by `lr_decay_factor` (what ReduceLROnPlateau with the same patience does); training stops after
`lr_decay_steps` such decays, or `max_epochs`, with the best weights restored.

After every epoch a checkpoint (weights, optimizer, early-stopping state, RNG states, history) is written
atomically; `resume=True` continues from it, losing at most the interrupted epoch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data import RecordingTensors, batches
from training.models.config import check_correlation_rounds, check_float, check_int
from training.models.readout import GaussianReadout
from twin import metrics
from twin.atomic import replacing, write_text
from twin.errors import InvalidInput

__all__ = ["TrainConfig", "TrainResult", "predict", "train", "validation_correlation"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOG = "log.jsonl"
CURVES = "curves.png"


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 0.009
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5
    lr_decay_factor: float = 0.3
    lr_decay_steps: int = 4
    min_lr: float = 1e-4
    tolerance: float = 1e-6
    scale_loss: bool = True
    # Poisson + weight * (1 - correlation), as SENSORIUM winners did; None: the model config's weight
    correlation_weight: float | None = None
    # learning-rate rounds the correlation term stays in the loss (1: until the first decay); None: the
    # model config's (ModelConfig.correlation_rounds)
    correlation_rounds: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bf16 autocast of the forward pass (CUDA, or a CPU with bf16 kernels)
    channels_last: bool = True  # NHWC memory layout for the convolutions: same arithmetic, faster

    def __post_init__(self) -> None:
        # finite: an infinite rate is an infinite step, an infinite tolerance an epoch that never counts
        for name in ("lr", "min_lr"):
            check_float(self, name, 0.0, math.inf, open_low=True)
        check_float(self, "lr_decay_factor", 0.0, 1.0, open_low=True)  # 1: the rate held, rounds still end
        check_float(self, "tolerance", 0.0, math.inf)
        for name in ("batch_size", "max_epochs", "patience", "lr_decay_steps"):
            check_int(self, name, 1)
        if self.correlation_weight is not None:
            check_float(self, "correlation_weight", 0.0, math.inf)
        check_correlation_rounds(self.correlation_rounds)
        if not self.device.startswith(("cpu", "cuda")):
            raise InvalidInput(f"device: {self.device!r}; expected cpu, cuda or cuda:<index>")

    def for_model(self, model_config: object | None) -> TrainConfig:
        """This config with its loss settled: its own correlation_weight and correlation_rounds where
        set, else the model config's (weight 0 and rounds None, throughout, for a model without them)."""
        weight, rounds = self.correlation_weight, self.correlation_rounds
        if weight is None:
            weight = float(getattr(model_config, "correlation_weight", 0.0))
        if rounds is None:
            rounds = getattr(model_config, "correlation_rounds", None)
        return replace(self, correlation_weight=weight, correlation_rounds=rounds)

    def correlation_weight_in(self, round_: int) -> float:
        """The correlation term's weight in learning-rate round `round_` (0 before the first decay); a
        config settled by `for_model`."""
        if self.correlation_rounds is not None and round_ >= self.correlation_rounds:
            return 0.0
        return float(self.correlation_weight or 0.0)


def check_device(device: str) -> str:
    """`device` if torch can compute there, else InvalidInput naming it (before any work starts)."""
    if not isinstance(device, str) or not device.startswith(("cpu", "cuda")):
        raise InvalidInput(f"device: {device!r}; expected cpu, cuda or cuda:<index>")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InvalidInput(f"device: {device!r}; expected cpu, cuda or cuda:<index>") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidInput(f"device: {device!r}, but no CUDA device is visible to torch; expected cpu")
        if parsed.index is not None and parsed.index >= count:
            raise InvalidInput(f"device: {device!r}; expected cuda:0 to cuda:{count - 1} ({count} visible)")
    return device


@dataclass
class TrainResult:
    best_epoch: int
    best_validation_correlation: float
    epochs: int
    history: list[dict] = field(default_factory=list)


def poisson_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum(p - r log(p + 1e-12)), the reference's PoissonLoss(avg=False)."""
    return (predictions - targets * torch.log(predictions + 1e-12)).sum()


def correlation_loss(predictions: torch.Tensor, targets: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """sum over neurons of (1 - Pearson correlation over the batch), times the batch size.

    Multiplied by the batch size so that its weight is per trial and neuron, like the Poisson sum.
    """
    p = predictions - predictions.mean(0)
    r = targets - targets.mean(0)
    rho = (p * r).sum(0) / torch.sqrt((p * p).sum(0) * (r * r).sum(0) + eps)
    return (1.0 - rho).sum() * predictions.shape[0]


def _forward(model: torch.nn.Module, key: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["images"], key, behavior=batch["behavior"], pupil_center=batch["pupil_center"])


def _loss(
    model: torch.nn.Module,
    key: str,
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    correlation_weight: float,
) -> torch.Tensor:
    """Poisson + correlation_weight * (1 - correlation) of a batch (the weight of the round being
    trained: `config.correlation_weight_in`); `config` says where and how the forward pass runs."""
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.amp):
        if config.channels_last:
            batch = {**batch, "images": batch["images"].contiguous(memory_format=torch.channels_last)}
        predictions = _forward(model, key, batch).float()
    loss = poisson_loss(predictions, batch["responses"])
    if correlation_weight:
        loss = loss + correlation_weight * correlation_loss(predictions, batch["responses"])
    return loss


@torch.no_grad()
def predict(
    model: torch.nn.Module, data: RecordingTensors, idx: np.ndarray, batch_size: int = 512
) -> np.ndarray:
    """Model responses (len(idx), N) in standardized units, eval mode, computed on the model's device
    (batches of data held elsewhere are copied there)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(idx), batch_size):
        batch = {k: v.to(device) for k, v in data.batch(idx[s : s + batch_size]).items()}
        out.append(_forward(model, data.data_key, batch).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def validation_correlation(
    model: torch.nn.Module, data: dict[str, RecordingTensors], tier: str = "validation"
) -> float:
    """Mean over all neurons of all recordings of the per-neuron correlation on `tier` (the reference's)."""
    per_neuron = []
    for d in data.values():
        idx = d.indices(tier)
        per_neuron.append(metrics.correlation(d.responses[idx].cpu().numpy(), predict(model, d, idx)))
    return float(np.mean(np.concatenate(per_neuron)))


def hold_positions(model: torch.nn.Module, epoch: int | None) -> bool:
    """Hold the positions of every readout whose position_warmup covers `epoch` (0-based, the one about
    to train) where they are, release the others (epoch None: release all); whether any is held. Held
    parameters get no gradient, so Adam leaves them and their moments alone."""
    held = False
    for module in model.modules():
        if isinstance(module, GaussianReadout):
            hold = epoch is not None and epoch < module.config.position_warmup
            for p in module.position_parameters():
                p.requires_grad_(not hold)
            held |= hold
    return held


# The share of a readout's neurons at the feature map's edge from which training warns that its positions
# have run off: on the simulated mouse a readout that learned has none there, stalled ones had 46-100%
# (bench/README.md, "Readout start"); real neurons may sit at the screen's edge, so a margin is left.
EDGE_WARNING = 0.25


def positions_at_edge(model: torch.nn.Module) -> dict[str, float]:
    """Per data key, the share of its readout's neurons whose positions sit at the feature map's edge
    (GaussianReadout.edge_fraction), 4 decimals; empty for a model without per-key Gaussian readouts."""
    readouts = getattr(model, "readouts", None) or {}
    return {
        key: round(readout.edge_fraction(), 4)
        for key, readout in readouts.items()
        if isinstance(readout, GaussianReadout)
    }


def _warn_positions_at_edge(edge: dict[str, float], warned: set[str], epoch: int, correlation: float) -> None:
    """A warning for each data key whose share at the edge reached EDGE_WARNING, once per key (`warned`
    holds the keys warned about in this training)."""
    for key, share in edge.items():
        if share >= EDGE_WARNING and key not in warned:
            warned.add(key)
            log.warning(
                "readout %s: %.0f%% of its neurons' positions at the feature map's edge after epoch %d "
                "(validation correlation %.3f): they have likely run off while the core was still forming, "
                "and the readout may not learn; readout.position_warmup or a position_lr_scale below 1 "
                "holds or slows them at the start",
                key,
                100 * share,
                epoch,
                correlation,
            )


def parameter_groups(model: torch.nn.Module, lr: float) -> list[dict]:
    """Adam's parameter groups: everything at `lr`, but the position parameters of each readout whose
    position_lr_scale is not 1 at that multiple of it (a group per scale, its "lr_scale" recorded for the
    decay's floor). The first group is the trainer's own learning rate (what the log reports)."""
    scaled: dict[float, list[torch.nn.Parameter]] = {}
    for module in model.modules():
        if isinstance(module, GaussianReadout) and module.config.position_lr_scale != 1.0:
            scaled.setdefault(module.config.position_lr_scale, []).extend(module.position_parameters())
    apart = {id(p) for ps in scaled.values() for p in ps}
    groups = [{"params": [p for p in model.parameters() if id(p) not in apart]}]
    for scale, params in sorted(scaled.items()):
        groups.append({"params": params, "lr": lr * scale, "lr_scale": scale})
    return groups


def decay_learning_rates(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    """One learning-rate decay: every group's rate times lr_decay_factor, not below min_lr times the
    group's lr_scale (a scaled group keeps its ratio to the trainer's rate down to the floor)."""
    for group in optimizer.param_groups:
        floor = config.min_lr * group.get("lr_scale", 1.0)
        group["lr"] = max(group["lr"] * config.lr_decay_factor, floor)


def _atomic_save(obj: object, path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def train(
    model: torch.nn.Module,
    data: dict[str, RecordingTensors],
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    extra: dict | None = None,
) -> TrainResult:
    """Train `model` on the train tiers of `data`, early-stopped on the validation tiers.

    Writes `checkpoint.pt` (every epoch), `best.pt` (best weights so far; `extra` is stored beside
    them, e.g. the model and data configuration), and `log.jsonl` (one line per epoch) in `run_dir`.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    for key, d in data.items():
        d.indices("train")
        d.indices("validation")
        if d.n_neurons == 0:
            raise InvalidInput(f"recording {key}: no neurons")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    rng = np.random.default_rng(config.seed)
    config = config.for_model(getattr(model, "config", None))  # the checkpoint stores the loss used
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.device.startswith("cuda"):
        # Batches keep one shape: cuDNN times its convolution algorithms once per shape, then uses the
        # fastest (a process-wide setting; results on a GPU are not bitwise reproducible anyway).
        torch.backends.cudnn.benchmark = True
    # Fused Adam: every parameter in one kernel instead of several per tensor (on a GPU, fewer launches);
    # the same update as the default to float rounding, on the CPU too, so one code path is tested.
    optimizer = torch.optim.Adam(parameter_groups(model, config.lr), lr=config.lr, fused=True)
    state = {"epoch": 0, "round": 0, "bad_epochs": 0, "best": -np.inf, "best_epoch": 0, "history": []}
    best_weights = copy.deepcopy(model.state_dict())
    if resume and (run / CHECKPOINT).is_file():
        checkpoint = torch.load(run / CHECKPOINT, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        best_weights = checkpoint["best_weights"]
        state = checkpoint["state"]
        rng.bit_generator.state = checkpoint["batch_rng"]
        _set_rng_state(checkpoint["rng"])
        log.info("resumed %s at epoch %d", run, state["epoch"])
    _rewrite_log(run / LOG, state["history"])
    n_train = {key: len(d.indices("train")) for key, d in data.items()}
    scale = {key: np.sqrt(n / config.batch_size) if config.scale_loss else 1.0 for key, n in n_train.items()}
    warned: set[str] = set()  # data keys whose readout's positions were reported at the edge

    try:
        while state["epoch"] < config.max_epochs and state["round"] < config.lr_decay_steps:
            started = time.perf_counter()
            model.train()
            held = hold_positions(model, state["epoch"])
            # The epoch's loss is summed where it is computed and read once: a read per step would make the
            # host wait for the device at every step.
            total, steps = torch.zeros((), dtype=torch.float64, device=config.device), 0
            weight = config.correlation_weight_in(state["round"])
            epoch_batches = list(batches(data, "train", config.batch_size, rng))
            bar = tqdm(
                epoch_batches,
                desc=f"epoch {state['epoch'] + 1}",
                unit="step",
                disable=not progress,
                leave=False,
            )
            for step in bar:
                optimizer.zero_grad(set_to_none=True)
                for key, idx in step:
                    batch = data[key].batch(idx)
                    loss = scale[key] * _loss(model, key, batch, config, weight) + model.regularizer(key)
                    loss.backward()
                    total += loss.detach().double()
                optimizer.step()
                steps += 1
            correlation = validation_correlation(model, data)
            state["epoch"] += 1
            improved = correlation > state["best"] + config.tolerance
            if improved:
                state.update(best=correlation, best_epoch=state["epoch"], bad_epochs=0)
                best_weights = copy.deepcopy(model.state_dict())
            else:
                state["bad_epochs"] += 1
            lr = optimizer.param_groups[0]["lr"]
            entry = {
                "epoch": state["epoch"],
                "train_loss": float(total) / max(steps, 1),
                "validation_correlation": correlation,
                "lr": lr,
                "correlation_weight": weight,
                "seconds": round(time.perf_counter() - started, 3),
                "improved": improved,
            }
            if held:
                entry["positions_held"] = True
            edge = positions_at_edge(model)
            if edge:
                entry["positions_at_edge"] = edge
                _warn_positions_at_edge(edge, warned, state["epoch"], correlation)
            if state["bad_epochs"] >= config.patience:
                state["round"] += 1
                state["bad_epochs"] = 0
                model.load_state_dict(best_weights)
                decay_learning_rates(optimizer, config)
                entry["lr_decay"] = state["round"]
            state["history"].append(entry)
            with open(run / LOG, "a") as f:
                f.write(json.dumps(entry) + "\n")
            if improved:
                _atomic_save(
                    {
                        "model": best_weights,
                        "epoch": state["epoch"],
                        "validation_correlation": correlation,
                        **(extra or {}),
                    },
                    run / BEST,
                )
            _atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_weights": best_weights,
                    "state": state,
                    "batch_rng": rng.bit_generator.state,
                    "rng": _rng_state(),
                    "config": asdict(config),
                },
                run / CHECKPOINT,
            )
            if progress:
                tqdm.write(
                    f"epoch {state['epoch']:3d}  loss {entry['train_loss']:.4g}  "
                    f"val corr {correlation:.4f}  lr {lr:.2g}" + ("  *" if improved else "")
                )
    finally:  # held positions are released however the loop ends (an interrupt included)
        hold_positions(model, None)
    model.load_state_dict(best_weights)
    plot_curves(state["history"], run / CURVES)
    return TrainResult(
        best_epoch=state["best_epoch"],
        best_validation_correlation=float(state["best"]),
        epochs=state["epoch"],
        history=state["history"],
    )


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss, validation correlation and learning rate per epoch, as a PNG.

    A bare matplotlib Figure (no pyplot: no global figure state, and a second less to import) with fixed
    margins (constrained layout would cost another half second per plot)."""
    if not history:
        return
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.9, wspace=0.28)
    series = (
        ("train_loss", "training loss"),
        ("validation_correlation", "validation correlation"),
        ("lr", "learning rate"),
    )
    for ax, (key, label) in zip(axes, series, strict=True):
        ax.plot(epochs, [h[key] for h in history], marker=".")
        ax.set_xlabel("epoch")
        ax.set_title(label)
    axes[2].set_yscale("log")
    for h in history:
        if "lr_decay" in h:
            for ax in axes:
                ax.axvline(h["epoch"], color="0.8", lw=0.8, zorder=0)
    with replacing(path) as tmp:  # keeps the .png suffix savefig goes by
        fig.savefig(tmp, dpi=100)


def _rewrite_log(path: Path, history: list[dict]) -> None:
    """The log holds exactly the epochs of the checkpoint (a resumed run drops the interrupted epoch)."""
    write_text(path, "".join(json.dumps(h) + "\n" for h in history))
