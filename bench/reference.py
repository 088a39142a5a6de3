"""The reference side of our benchmarks: the SENSORIUM 2022 baseline as its users ran it, for benchmarks only.

Built from neuralpredictors 0.3.0 itself (the `bench` extra), assembled the way sinzlab/sensorium does:
`static_loaders` (FileTreeDataset + NeuroNormalizer, ScaleInputs, Subsample, ToTensor; a random sampler
on 'train'), `stacked_core_full_gauss_readout` (Stacked2dCore + MultipleFullGaussian2d with the 'cortex'
grid predictor, FiringRateEncoder with ELU + 1) and `standard_trainer` (LongCycler over data keys,
PoissonLoss(avg=False) scaled by sqrt(len(dataset) / batch), core + readout regularizers, Adam, one
optimizer step per batch of every recording). The sensorium package and nnfabrik are not dependencies:
the few lines of theirs that the baseline needs are re-written here, marked where they stand in for them.

neuralpredictors 0.3.0 does not import on Python >= 3.10; `import_neuralpredictors` applies the small
compatibility shim of TOOLCHAIN.md first. Nothing here is imported by `twin` or `training`.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib
import os
import random
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BASELINE",
    "StepStats",
    "build_reference_model",
    "import_neuralpredictors",
    "predict_reference",
    "reference_loaders",
    "reference_steps",
    "reference_validation_correlation",
    "train_reference",
]

# The SENSORIUM 2022 baseline (model_config of the sensorium notebooks for stacked_core_full_gauss_readout).
BASELINE: dict[str, Any] = {
    "hidden_channels": 64,
    "input_kern": 9,
    "hidden_kern": 7,
    "layers": 4,
    "gamma_input": 6.3831,
    "skip": 0,
    "final_nonlinearity": True,
    "core_bias": False,
    "momentum": 0.9,
    "pad_input": False,
    "batch_norm": True,
    "hidden_dilation": 1,
    "laplace_padding": None,
    "input_regularizer": "LaplaceL2norm",
    "use_avg_reg": False,  # stacked_core_full_gauss_readout's default (Stacked2dCore's own is True)
    "stack": -1,
    "depth_separable": True,
    "linear": False,
    "init_mu_range": 0.3,
    "init_sigma": 0.1,
    "readout_bias": True,
    "gamma_readout": 0.0076,
    "elu_offset": 0,
    "gauss_type": "full",
    "grid_mean_predictor": {
        "type": "cortex",
        "input_dimensions": 2,
        "hidden_layers": 1,
        "hidden_features": 30,
        "final_tanh": True,
    },
    # SENSORIUM+ only (shifter=True): neuralpredictors' MLPShifter as the model function builds it.
    "input_channels_shifter": 2,
    "hidden_channels_shifter": 5,
    "shift_layers": 3,
    "gamma_shifter": 0,
}

MODEL_HEIGHT = 36  # the baseline's input: 144x256 images scaled by 0.25


# ---------------------------------------------------------------------------------------------------
# Import


def import_neuralpredictors() -> types.ModuleType:
    """neuralpredictors 0.3.0, importable on Python 3.11 (TOOLCHAIN.md's shim), or ImportError.

    0.3.0 does `from collections import Iterable` (layers/cores/conv2d.py, data/transforms.py) and
    `from collections import Mapping` (data/utils.py), names that left `collections` in 3.10: they are
    aliased to collections.abc. layers/cores/conv2d.py does `import torchvision` for TransferLearningCore
    alone, which reads `torchvision.models` only when such a core is built. When torchvision does not
    import, a stub stands in while the modules that import it are loaded, and is then taken out of
    sys.modules again so that nothing else (torch included) mistakes it for the real package.
    """
    for name in ("Iterable", "Mapping"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    stubbed = False
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # a broken CUDA build raises more than ImportError
            sys.modules["torchvision"] = _torchvision_stub()
            stubbed = True
    try:
        for module in _SHIMMED_MODULES:
            importlib.import_module(module)
        return importlib.import_module("neuralpredictors")
    except ImportError as exc:
        raise ImportError(
            f"neuralpredictors does not import ({exc}); install the bench extra: pip install -e '.[bench]'"
        ) from exc
    finally:
        if stubbed:
            del sys.modules["torchvision"]


# The modules of neuralpredictors 0.3.0 that need the shim (the others import without it).
_SHIMMED_MODULES = (
    "neuralpredictors.layers.cores.conv2d",
    "neuralpredictors.data.transforms",
    "neuralpredictors.data.utils",
)


def _torchvision_stub() -> types.ModuleType:
    def unavailable(name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise ImportError(
            f"torchvision.models.{name}: torchvision is a stub here (TOOLCHAIN.md: it does not import "
            "beside CPU torch); neuralpredictors' TransferLearningCore is unavailable"
        )

    stub = types.ModuleType("torchvision", "Stub from bench/reference.py while neuralpredictors imports.")
    models = types.ModuleType("torchvision.models")
    models.__getattr__ = unavailable  # type: ignore[attr-defined]
    stub.models = models  # type: ignore[attr-defined]
    return stub


def _set_random_seed(seed: int) -> None:
    """nnfabrik.utility.nn_helpers.set_random_seed."""
    np.random.seed(seed)  # noqa: NPY002 - the global state is what the reference seeds
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Data


def _linked_copy(folder: Path, into: Path) -> Path:
    """A copy of a recording folder whose files are hard links (a real copy across file systems).

    FileTreeDataset writes config.json into the folder it reads; it writes into the copy, never into
    the original. Reading a hard link is reading the same inode: same bytes, same page cache.
    """
    target = into / folder.name
    if not target.exists():
        try:
            shutil.copytree(folder, target, copy_function=os.link)
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
    return target


def _data_key(folder: Path) -> str:
    """static_loader's data key: the folder name between 'static' and '-GrayImageNet'."""
    return folder.name.split("static")[-1].split("-GrayImageNet")[0]


def reference_loaders(
    folders: Sequence[str | os.PathLike[str]],
    batch_size: int = 128,
    *,
    include_behavior: bool = False,
    include_eye_position: bool = False,
    scale: float | None = None,
    cuda: bool = False,
    workdir: str | os.PathLike[str] | None = None,
    tiers: Sequence[str] = ("train", "validation", "test"),
    materialize: bool = False,
) -> dict[str, dict[str, torch.utils.data.DataLoader]]:
    """sensorium.datasets.static_loaders: {tier: {data_key: DataLoader}} over copies of `folders`.

    Per trial, the dataset np.loads one file per variable and applies, in static_loader's order:
    NeuroNormalizer (images z-scored, responses / thresholded std, behaviour / std, pupil z-scored),
    AddBehaviorAsChannels (include_behavior), ScaleInputs(scale) (skimage rescale, reflect, no
    anti-aliasing; default: to the baseline's 36 rows, i.e. 0.25 for 144x256), Subsample(all neurons),
    ToTensor(cuda). SubsetRandomSampler on 'train', SubsetSequentialSampler elsewhere; num_workers=0
    (the dataset's namedtuples do not pickle on 3.11). FileTreeDataset keeps its default use_cache=True:
    a trial read once stays in memory raw, its transforms are re-applied on every read.
    `workdir`: where the copies go (default: a new temporary folder, left for the caller to delete).
    `materialize`: apply the (deterministic) transforms to every trial once and keep the results, the
    same items in the same order, so that a long accuracy run on a GPU is not bound by the per-trial
    file reads and rescaling. Speed benchmarks leave it off: that path is what its users run.
    """
    import_neuralpredictors()
    from neuralpredictors.data.datasets import FileTreeDataset
    from neuralpredictors.data.samplers import SubsetSequentialSampler
    from neuralpredictors.data.transforms import (
        AddBehaviorAsChannels,
        NeuroNormalizer,
        ScaleInputs,
        Subsample,
        ToTensor,
    )
    from torch.utils.data import DataLoader, SubsetRandomSampler

    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="twin-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    data_keys = ["images", "responses"]
    if include_behavior:
        data_keys.append("behavior")
    if include_eye_position:
        data_keys.append("pupil_center")
    loaders: dict[str, dict[str, DataLoader]] = {tier: {} for tier in tiers}
    for folder in map(Path, folders):
        if not (folder / "meta").is_dir():
            raise FileNotFoundError(f"{folder}: not a recording folder (no meta/)")
        dat = FileTreeDataset(str(_linked_copy(folder, work)), *data_keys)
        height = int(np.load(folder / "data" / "images" / "0.npy", mmap_mode="r").shape[-2])
        factor = scale if scale is not None else MODEL_HEIGHT / height
        transforms: list[Any] = [NeuroNormalizer(dat, exclude=None)]
        if include_behavior:
            transforms.append(AddBehaviorAsChannels())
        if factor != 1:
            transforms.append(ScaleInputs(scale=factor))
        transforms += [Subsample(np.arange(len(dat.neurons.unit_ids))), ToTensor(cuda)]
        dat.transforms.extend(transforms)
        tier_array = dat.trial_info.tiers
        if materialize:
            dat = _Materialized(dat)
        key = _data_key(folder)
        for tier in tiers:
            subset = np.flatnonzero(tier_array == tier)
            sampler = SubsetRandomSampler(subset) if tier == "train" else SubsetSequentialSampler(subset)
            loaders[tier][key] = DataLoader(dat, sampler=sampler, batch_size=batch_size)
    return loaders


class _Materialized(torch.utils.data.Dataset):
    """Every item of a dataset computed once; indexing returns the stored item."""

    def __init__(self, dataset: Any):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.dataset = dataset  # what the model builder reads (data_keys, neurons, trial_info)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["dataset"], name)


# ---------------------------------------------------------------------------------------------------
# Model


def _train_loaders(dataloaders: Any) -> dict[str, torch.utils.data.DataLoader]:
    if isinstance(dataloaders, Mapping):
        return dict(dataloaders.get("train", dataloaders))
    return reference_loaders(list(dataloaders))["train"]


def build_reference_model(
    dataloaders: Mapping[str, Any] | Sequence[str | os.PathLike[str]],
    *,
    seed: int = 0,
    shifter: bool = False,
    **overrides: Any,
) -> torch.nn.Module:
    """sensorium.models.stacked_core_full_gauss_readout with the SENSORIUM 2022 baseline config.

    dataloaders: reference_loaders' output (or its 'train' dict), or recording folders (loaders are
    then built with the defaults). The input channels and neuron counts come from each loader's first
    batch (nnfabrik's get_dims_for_loader_dict), the source grids from each dataset's
    cell_motor_coordinates (sensorium's prepare_grid). `shifter=True`: the SENSORIUM+ MLPShifter
    (loaders need include_eye_position). `overrides`: any key of BASELINE.
    Returns neuralpredictors' FiringRateEncoder: model(images, data_key=key, pupil_center=...).
    """
    import_neuralpredictors()
    from neuralpredictors.layers.cores import Stacked2dCore
    from neuralpredictors.layers.encoders import FiringRateEncoder
    from neuralpredictors.layers.readouts import FullGaussian2d, MultiReadoutSharedParametersBase
    from neuralpredictors.layers.shifters import MLPShifter
    from neuralpredictors.utils import get_module_output

    unknown = sorted(set(overrides) - set(BASELINE))
    if unknown:
        raise TypeError(f"build_reference_model: unknown options {unknown}; expected keys of BASELINE")
    c = {**BASELINE, **overrides}
    loaders = _train_loaders(dataloaders)

    shapes = {}  # get_dims_for_loader_dict
    for key, loader in loaders.items():
        batch = next(iter(loader))
        shapes[key] = {name: tuple(value.shape) for name, value in batch._asdict().items()}
    in_name, out_name = next(iter(loaders.values())).dataset.data_keys[:2]
    n_neurons = {key: s[out_name][1] for key, s in shapes.items()}
    input_channels = next(iter(shapes.values()))[in_name][1]

    _set_random_seed(seed)
    grid_mean_predictor = dict(c["grid_mean_predictor"]) if c["grid_mean_predictor"] else None
    source_grids = grid_type = None
    if grid_mean_predictor is not None:  # prepare_grid
        grid_type = grid_mean_predictor.pop("type")
        dims = grid_mean_predictor.pop("input_dimensions", 2)
        source_grids = {
            key: loader.dataset.neurons.cell_motor_coordinates[:, :dims] for key, loader in loaders.items()
        }

    core = Stacked2dCore(
        input_channels=input_channels,
        hidden_channels=c["hidden_channels"],
        input_kern=c["input_kern"],
        hidden_kern=c["hidden_kern"],
        layers=c["layers"],
        gamma_input=c["gamma_input"],
        skip=c["skip"],
        final_nonlinearity=c["final_nonlinearity"],
        bias=c["core_bias"],
        momentum=c["momentum"],
        pad_input=c["pad_input"],
        batch_norm=c["batch_norm"],
        hidden_dilation=c["hidden_dilation"],
        laplace_padding=c["laplace_padding"],
        input_regularizer=c["input_regularizer"],
        stack=c["stack"],
        depth_separable=c["depth_separable"],
        linear=c["linear"],
        use_avg_reg=c["use_avg_reg"],
    )
    in_shapes = {key: get_module_output(core, s[in_name])[1:] for key, s in shapes.items()}
    # sensorium's MultipleFullGaussian2d: MultiReadoutSharedParametersBase with FullGaussian2d readouts.
    readout = MultiReadoutSharedParametersBase(
        in_shape_dict=in_shapes,
        n_neurons_dict=n_neurons,
        base_readout=FullGaussian2d,
        init_mu_range=c["init_mu_range"],
        bias=c["readout_bias"],
        init_sigma=c["init_sigma"],
        gamma_readout=c["gamma_readout"],
        gauss_type=c["gauss_type"],
        grid_mean_predictor=grid_mean_predictor,
        grid_mean_predictor_type=grid_type,
        source_grids=source_grids,
    )
    shifter_module = None
    if shifter:
        shifter_module = MLPShifter(
            data_keys=list(loaders),
            input_channels=c["input_channels_shifter"],
            hidden_channels_shifter=c["hidden_channels_shifter"],
            shift_layers=c["shift_layers"],
            gamma_shifter=c["gamma_shifter"],
        )
    return FiringRateEncoder(core=core, readout=readout, shifter=shifter_module, elu_offset=c["elu_offset"])


# ---------------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step of `reference_steps` did: images seen, seconds spent fetching batches."""

    epoch: int
    images: int
    data_seconds: float
    last_of_epoch: bool


def reference_steps(
    model: torch.nn.Module,
    loaders: Mapping[str, Any],
    *,
    lr: float = 0.009,
    device: str = "cpu",
    scale_loss: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> Iterator[StepStats]:
    """sensorium.training.standard_trainer's inner loop, one optimizer step per `next()`, endlessly.

    An epoch is one LongCycler pass over the 'train' loaders (each recording's batches, alternating,
    until the largest is exhausted); the optimizer steps once per batch of every recording (gradients
    accumulated over recordings, optim_step_count = number of recordings). The loss of a batch is
    PoissonLoss(avg=False) * sqrt(len(dataset) / batch) + core.regularizer() + readout.regularizer(key).
    Early stopping and the LR schedule act between epochs: `train_early_stopped` drives this loop with
    them (pass its optimizer, so that the scheduler decays the learning rate this loop steps with).
    """
    import_neuralpredictors()
    from neuralpredictors.measures.modules import PoissonLoss
    from neuralpredictors.training import LongCycler

    train = dict(loaders.get("train", loaders))
    criterion = PoissonLoss(avg=False)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    per_step = len(train)  # optim_step_count
    model.to(device)
    model.train()

    def full_objective(data_key: str, batch: Any) -> torch.Tensor:
        images, responses = batch[0], batch[1]
        scale = np.sqrt(len(train[data_key].dataset) / images.shape[0]) if scale_loss else 1.0
        regularizers = model.core.regularizer() + model.readout.regularizer(data_key)
        prediction = model(images.to(device), data_key=data_key, **batch._asdict())
        return scale * criterion(prediction, responses.to(device)) + regularizers

    epoch = 0
    while True:
        cycler = LongCycler(train)
        n_batches = len(cycler)
        optimizer.zero_grad()
        images, data_seconds = 0, 0.0
        batches = iter(enumerate(cycler))
        while True:
            fetch = time.perf_counter()
            try:
                batch_no, (data_key, batch) = next(batches)
            except StopIteration:
                break
            data_seconds += time.perf_counter() - fetch
            full_objective(data_key, batch).backward()
            images += int(batch[0].shape[0])
            if (batch_no + 1) % per_step == 0:
                optimizer.step()
                optimizer.zero_grad()
                yield StepStats(epoch, images, data_seconds, batch_no + 1 == n_batches)
                images, data_seconds = 0, 0.0
        epoch += 1


def train_reference(
    model: torch.nn.Module,
    loaders: Mapping[str, Any],
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 0.009,
    device: str = "cpu",
    on_epoch: Callable[[int], None] | None = None,
) -> list[float]:
    """Train with `reference_steps` for `steps` optimizer steps or `epochs` epochs.

    Returns the wall seconds of every optimizer step, data loading included. `on_epoch(epoch)` runs
    after each completed epoch (e.g. a validation score), outside the timed steps.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("train_reference: give exactly one of steps and epochs")
    durations: list[float] = []
    done_epochs = 0
    started = time.perf_counter()
    for stats in reference_steps(model, loaders, lr=lr, device=device):
        durations.append(time.perf_counter() - started)
        if stats.last_of_epoch:
            done_epochs += 1
            if on_epoch is not None:
                on_epoch(done_epochs)
        if (steps is not None and len(durations) >= steps) or (epochs is not None and done_epochs >= epochs):
            break
        started = time.perf_counter()
    return durations


def train_early_stopped(
    model: torch.nn.Module,
    loaders: Mapping[str, Any],
    *,
    max_epochs: int = 200,
    lr: float = 0.009,
    patience: int = 5,
    lr_decay_factor: float = 0.3,
    lr_decay_steps: int = 4,
    min_lr: float = 1e-4,
    tolerance: float = 1e-6,
    device: str = "cpu",
) -> dict:
    """sensorium's standard_trainer: the reference loop under neuralpredictors' own early stopping.

    Adam; ReduceLROnPlateau(mode="max", factor, patience, threshold=tolerance, threshold_mode="abs",
    min_lr) stepped with the validation correlation after every epoch; neuralpredictors.training
    .early_stopping(interval=1, patience, max_iter=max_epochs, tolerance, restore_best=True,
    lr_decay_steps): after `patience` epochs without improvement the best weights are restored and the
    learning rate decays, `lr_decay_steps` times, then training stops with the best weights. The
    defaults are the SENSORIUM 2022 baseline's (SENSORIUM.md §4). Returns the validation curve.
    """
    import_neuralpredictors()
    from neuralpredictors.training import early_stopping

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=lr_decay_factor,
        patience=patience,
        threshold=tolerance,
        threshold_mode="abs",
        min_lr=min_lr,
    )
    steps = reference_steps(model, loaders, lr=lr, device=device, optimizer=optimizer)
    curve: list[float] = []
    for _, objective in early_stopping(
        model,
        lambda m: reference_validation_correlation(m, loaders, device=device),
        interval=1,
        patience=patience,
        max_iter=max_epochs,
        maximize=True,
        tolerance=tolerance,
        restore_best=True,
        scheduler=scheduler,
        lr_decay_steps=lr_decay_steps,
    ):
        curve.append(float(objective))
        for stats in steps:
            if stats.last_of_epoch:
                break
    model.eval()
    return {
        "epochs": len(curve),
        "validation_curve": curve,
        "validation_correlation": reference_validation_correlation(model, loaders, device=device),
    }


@torch.no_grad()
def predict_reference(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, data_key: str, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(responses, predictions), each (trials, neurons), in eval mode (sensorium's model_predictions)."""
    was_training = model.training
    model.eval()
    targets, outputs = [], []
    for batch in loader:
        outputs.append(model(batch[0].to(device), data_key=data_key, **batch._asdict()).cpu().numpy())
        targets.append(batch[1].cpu().numpy())
    model.train(was_training)
    return np.concatenate(targets), np.concatenate(outputs)


def reference_validation_correlation(
    model: torch.nn.Module, loaders: Mapping[str, Any], tier: str = "validation", device: str = "cpu"
) -> float:
    """Mean over all neurons of all recordings of the per-neuron correlation on `tier`.

    sensorium's get_correlations(per_neuron=False), computed with twin.metrics.correlation (the same
    definition: sd ddof=0 + 1e-8, NaN -> 0) so that both sides of a benchmark share one metric.
    """
    from twin import metrics

    per_neuron = [
        metrics.correlation(*predict_reference(model, loader, key, device))
        for key, loader in loaders[tier].items()
    ]
    return float(np.mean(np.concatenate(per_neuron)))
