"""Export a training run as a served artifact: ONNX graphs of the ensemble and its input gradient.

ARTIFACT_DIR/
  manifest.json               what a server needs to know (DESIGN.md §1), sha256 of every other file
  responses-<data_key>.onnx   raw images (+ behaviour, pupil centre) -> mean, std, members
  gradient-<data_key>.onnx    raw images, weights (+ ...) -> d(sum weights * mean) / d images

Each graph holds every selected member and the recording's preprocessing, so a client sends raw pixel
units at the model's resolution and gets responses on the recording's scale. The gradient graph is
torch.autograd.grad traced into the graph (TOOLCHAIN.md, "ONNX export"): batch norm folded into the
convs, the few ops whose backward torch.export cannot trace swapped for equal ones
(`ExportableGradients`), and the convolutions' input gradient translated to a Conv with flipped
kernels (stride 1, >= 16 input channels) or a ConvTranspose (the rest).
"""

from __future__ import annotations

import copy
import datetime
import inspect
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

import twin
from training.data import Preprocessing
from training.models import ModelConfig, Twin
from training.run import load_members, selected_members
from twin.artifact import MANIFEST, RESPONSE_UNITS, SCHEMA_VERSION, checksum
from twin.data import load_recording
from twin.errors import FormatError, InvalidInput

__all__ = [
    "ExportableGradients",
    "GradientGraph",
    "ResponseGraph",
    "export_run",
    "fold_batch_norm",
    "recording_entry",
    "required_inputs",
]

log = logging.getLogger(__name__)

IMAGE_UNITS = "raw pixel units"
OUTPUTS = ["mean", "std", "members"]
_EMBED_LIMIT = 1_800_000_000  # bytes of weights; protobuf caps a file at 2 GB, the graph needs room too
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNITS = {
    "images": IMAGE_UNITS,
    "behavior": "raw units (pupil dilation, its derivative, running speed)",
    "pupil_center": "raw units (horizontal, vertical eye position)",
    "weights": "per neuron, multiplies the mean response",
    "mean": RESPONSE_UNITS,
    "std": RESPONSE_UNITS,
    "members": RESPONSE_UNITS,
    "gradient": f"{RESPONSE_UNITS} per {IMAGE_UNITS}",
}


def required_inputs(config: ModelConfig) -> dict[str, bool]:
    """Which raw inputs besides images the model reads."""
    return {
        "behavior": bool(config.behavior_channels or config.modulator),
        "pupil_center": bool(config.shifter),
    }


class ResponseGraph(nn.Module):
    """Raw images (B, H, W) (+ behaviour, pupil centre) -> the ensemble on the recording's response scale.

    mean (B, N), std (B, N) across members (ddof 0, as training.ensemble.mean_and_spread) and the members
    (M, B, N). Normalization is the training pipeline's (training.data), applied inside the graph.
    """

    def __init__(self, nets: Sequence[Twin], data_key: str, preprocessing: Preprocessing):
        super().__init__()
        if not nets:
            raise InvalidInput("nets: empty; expected at least one trained member")
        self.nets = nn.ModuleList(nets)
        self.data_key = data_key
        self.uses = required_inputs(nets[0].config)
        pre = preprocessing
        for name, value in (
            ("image_mean", pre.image_mean),
            ("image_std", pre.image_std),
            ("response_std", pre.response_std),
            ("behavior_std", pre.behavior_std),
            ("pupil_mean", pre.pupil_mean),
            ("pupil_std", pre.pupil_std),
        ):
            self.register_buffer(name, torch.as_tensor(np.asarray(value, np.float32)))

    def members(self, images: Tensor, behavior: Tensor | None, pupil_center: Tensor | None) -> Tensor:
        """(M, B, N) responses of every member, on the recording's scale."""
        x = ((images - self.image_mean) / self.image_std)[:, None]  # (B, 1, H, W) model units
        b = behavior / self.behavior_std if self.uses["behavior"] and behavior is not None else None
        p = None
        if self.uses["pupil_center"] and pupil_center is not None:
            p = (pupil_center - self.pupil_mean) / self.pupil_std  # (B, 2)
        out = [net(x, self.data_key, behavior=b, pupil_center=p) for net in self.nets]  # M x (B, N)
        return torch.stack(out) * self.response_std  # (M, B, N)

    def forward(
        self, images: Tensor, behavior: Tensor | None = None, pupil_center: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        members = self.members(images, behavior, pupil_center)  # (M, B, N)
        mean = members.mean(0)  # (B, N)
        std = (members - mean).pow(2).mean(0).sqrt()  # (B, N)
        return mean, std, members


class GradientGraph(nn.Module):
    """d(sum_n weights[b, n] * mean[b, n]) / d images[b]: (B, H, W) raw units, by autograd in the graph."""

    def __init__(self, responses: ResponseGraph):
        super().__init__()
        self.responses = responses

    def forward(
        self,
        images: Tensor,
        weights: Tensor,
        behavior: Tensor | None = None,
        pupil_center: Tensor | None = None,
    ) -> Tensor:
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)  # (B, H, W)
            mean = self.responses.members(x, behavior, pupil_center).mean(0)  # (B, N)
            (gradient,) = torch.autograd.grad((mean * weights).sum(), x)
        return gradient  # (B, H, W)


class ExportableGradients(TorchFunctionMode):
    """While active, ops whose backward torch.export (2.13) cannot trace are computed by equal ops it can.

    rsqrt and einsum leave fake tensors in the exported program when differentiated inside it, and
    replicate padding's backward has no ONNX translation. The readout's embedding lookups become plain
    indexing: the same Gather forward, but a backward without embedding's padding mask (a Where and an
    Expand over a (B, N, C) tensor per lookup, ~30% of the gradient graph's time for nothing: the readout
    has no padding index). Values are unchanged; only the traced ops differ.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.rsqrt or func is Tensor.rsqrt:
            return args[0].pow(-0.5)
        if func is F.embedding and _plain_lookup(args, kwargs):
            index, table = args[:2]
            return table.index_select(0, index.reshape(-1)).reshape(*index.shape, table.shape[-1])
        if _is_readout_einsum(func, args):
            rows, weights = args[1:] if len(args) == 3 else args[1]
            return _ChannelDot.apply(rows, weights)
        if func is F.pad and _pad_mode(args, kwargs) == "replicate":
            pad = args[1] if len(args) > 1 else kwargs["pad"]
            return _replicate_pad(args[0], pad)
        return func(*args, **kwargs)


class ExportableResponses(TorchFunctionMode):
    """While active, the readout's channel sum (einsum "bnc,nc->bn") is traced as multiply + sum, which
    ONNX Runtime runs 3.5x faster than its Einsum at batch 1 (and ~15% faster at batch 128); same values."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _is_readout_einsum(func, args):
            return _readout_dot(args)
        return func(*args, **(kwargs or {}))


def _plain_lookup(args: tuple, kwargs: dict) -> bool:
    """F.embedding(index, table) without padding index, max norm or gradient scaling."""
    options = dict(
        zip(("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"), args[2:], strict=False)
    )
    options.update(kwargs)
    return (
        len(args) >= 2
        and options.get("padding_idx") is None
        and options.get("max_norm") is None
        and not options.get("scale_grad_by_freq", False)
        and not options.get("sparse", False)
    )


def _is_readout_einsum(func, args: tuple) -> bool:
    return func is torch.einsum and bool(args) and args[0].replace(" ", "") == "bnc,nc->bn"


class _ChannelDot(torch.autograd.Function):
    """(rows * weights).sum(-1) whose backward multiplies by broadcasting: autograd's own backward of the
    sum materializes the incoming (B, N) gradient as a (B, N, C) Expand before the multiply."""

    @staticmethod
    def forward(ctx, rows: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(weights)
        return (rows * weights).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (weights,) = ctx.saved_tensors
        return grad.unsqueeze(-1) * weights, None


def _readout_dot(args: tuple) -> Tensor:
    rows, weights = args[1:] if len(args) == 3 else args[1]  # (B, N, C), (N, C)
    return (rows * weights).sum(-1)  # (B, N)


def _pad_mode(args: tuple, kwargs: dict) -> str:
    return args[2] if len(args) > 2 else kwargs.get("mode", "constant")


def _replicate_pad(x: Tensor, pad: Sequence[int]) -> Tensor:
    """F.pad(x, pad, mode="replicate") as edge slices, expanded and concatenated (last dims first)."""
    for i in range(len(pad) // 2):
        dim = x.ndim - 1 - i
        before, after = int(pad[2 * i]), int(pad[2 * i + 1])
        first, last = x.narrow(dim, 0, 1), x.narrow(dim, x.shape[dim] - 1, 1)
        sizes = list(x.shape)
        parts = []
        if before:
            sizes[dim] = before
            parts.append(first.expand(sizes))
        parts.append(x)
        if after:
            sizes[dim] = after
            parts.append(last.expand(sizes))
        x = torch.cat(parts, dim)
    return x


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """A copy of `module` (eval mode) with every BatchNorm2d folded into the conv just before it."""
    module = copy.deepcopy(module).eval()
    for parent in list(module.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for previous, name in itertools.pairwise(names):
            norm, owner, slot = parent._modules[name], parent, previous
            conv = parent._modules[previous]
            if isinstance(conv, nn.Sequential) and len(conv):  # a depth-separable conv: its last 1x1 conv
                owner, slot = conv, list(conv._modules)[-1]
                conv = conv[-1]
            if isinstance(norm, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
                owner._modules[slot] = fuse_conv_bn_eval(conv, norm)
                parent._modules[name] = nn.Identity()
    left = [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise InvalidInput(f"model: batch norms {left} do not follow a conv; cannot fold them for export")
    return module


def gradient_net(net: Twin) -> Twin:
    """The member as the gradient graph traces it: batch norm folded (its eval backward does not export)."""
    return fold_batch_norm(net).requires_grad_(False)


def _convolution_backward(
    grad_output,
    input,
    weight,
    bias_sizes,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    mask,
):
    """aten.convolution_backward's input gradient (the only output used) as a Conv or a ConvTranspose."""
    from onnxscript import opset18 as op

    if transposed or not mask[0] or mask[1] or mask[2]:
        raise FormatError("export: only the input gradient of a plain convolution is supported")
    kernel = [int(k) for k in weight.shape[2:]]
    # Stride 1 into a layer with many input channels: a Conv. Into few (the first layer's 1-7 channels),
    # ONNX Runtime's blocked Conv would pad the gradient's channels to 16: ConvTranspose is faster there.
    if all(s == 1 for s in stride) and int(weight.shape[1]) * groups >= _CONV_GRADIENT_MIN_CHANNELS:
        return (_stride_one_input_gradient(grad_output, weight, kernel, padding, dilation, groups),)
    size = [int(s) for s in input.shape[2:]]
    # ConvTranspose must give back the input's size; a strided conv drops up to stride-1 rows and columns.
    parts = zip(size, padding, dilation, kernel, stride, strict=True)
    extra = [(n + 2 * p - d * (k - 1) - 1) % s for n, p, d, k, s in parts]
    grad_input = op.ConvTranspose(
        grad_output,
        weight,
        strides=list(stride),
        pads=list(padding) * 2,
        dilations=list(dilation),
        group=groups,
        output_padding=extra,
    )
    return (grad_input,)


_CONV_GRADIENT_MIN_CHANNELS = 16


def _stride_one_input_gradient(grad_output, weight, kernel, padding, dilation, groups: int):
    """A stride-1 convolution's input gradient as a Conv with the kernel flipped and in/out swapped.

    The same numbers as ConvTranspose, but ONNX Runtime's Conv is far faster, above all depthwise
    (its grouped ConvTranspose took a third of the gradient graph's time). The weight rearrangement is
    constant and folded at export. weight: (C_out, C_in / groups, *kernel).
    """
    from onnxscript import opset18 as op

    c_out, c_in_group = int(weight.shape[0]), int(weight.shape[1])
    out_group = c_out // groups
    rank = len(kernel)
    # (groups, C_out/g, C_in/g, *k) -> (groups, C_in/g, C_out/g, *k) -> (C_in, C_out/g, *k)
    swapped = op.Reshape(weight, op.Constant(value_ints=[groups, out_group, c_in_group, *kernel]))
    swapped = op.Transpose(swapped, perm=[0, 2, 1, *range(3, 3 + rank)])
    swapped = op.Reshape(swapped, op.Constant(value_ints=[groups * c_in_group, out_group, *kernel]))
    axes = list(range(2, 2 + rank))
    flipped = op.Slice(
        swapped,
        op.Constant(value_ints=[-1] * rank),
        op.Constant(value_ints=[-(2**62)] * rank),
        op.Constant(value_ints=axes),
        op.Constant(value_ints=[-1] * rank),
    )
    pads = [d * (k - 1) - p for k, p, d in zip(kernel, padding, dilation, strict=True)]
    if min(pads) < 0:  # padding beyond the kernel's reach: crop instead (not produced by our models)
        raise FormatError(f"export: convolution padding {list(padding)} exceeds its kernel {kernel}")
    return op.Conv(grad_output, flipped, pads=pads * 2, dilations=list(dilation), group=groups)


def _export_graph(
    model: nn.Module, args: tuple, kwargs: dict, outputs: list[str], path: Path, opset: int | None
) -> None:
    """torch.onnx.export with a dynamic batch (dim 0 of every input); weights inside unless over 2 GB.

    The exporter's own optimizer is off: its Min/Max -> Clip rewrite drops initializers when one tensor
    is clamped twice (the readout's corner indices), leaving an invalid graph. Constant folding alone
    keeps what matters (fixed readout positions become constants) and ORT optimizes the rest on load.
    """
    import onnx
    from onnxscript import optimizer
    from onnxscript.ir.passes.common import RemoveUnusedNodesPass

    batch = torch.export.Dim("batch")
    parameters = [p for p in inspect.signature(model.forward).parameters if p != "self"]
    names = [*parameters[: len(args)], *kwargs]
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # not "torchvision is not installed": we use none of its ops
    try:
        with warnings.catch_warnings():
            # Notes from torch 2.13's exporter about its own internals, not about this model.
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            program = torch.onnx.export(
                model,
                args,
                kwargs=kwargs,
                dynamo=True,
                dynamic_shapes={name: {0: batch} for name in names},
                output_names=outputs,
                opset_version=opset,
                custom_translation_table={torch.ops.aten.convolution_backward.default: _convolution_backward},
                optimize=False,
                verbose=False,
            )
    finally:
        registration.setLevel(level)
    optimizer.fold_constants(program.model)
    RemoveUnusedNodesPass()(program.model)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    program.save(path, external_data=size > _EMBED_LIMIT)
    onnx.checker.check_model(str(path))


def _graph_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of a saved graph as manifest entries: name, dtype, shape ("batch" if dynamic)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph

    def entry(value) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else "batch" for d in tensor.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return {"name": value.name, "dtype": dtype, "shape": shape, "units": _UNITS.get(value.name, "")}

    return {"inputs": [entry(v) for v in graph.input], "outputs": [entry(v) for v in graph.output]}


def _recording(path: str, data_key: str, n_neurons: int) -> tuple[list[int], tuple[int, int]]:
    """Neuron ids and image size of the recording a run was trained on (run.json names its path)."""
    if not Path(path).exists():
        raise FormatError(
            f"recording {data_key}: {path} (named in run.json) is missing; its neuron ids are needed"
        )
    rec = load_recording(path, progress=False)
    if rec.data_key != data_key or rec.n_neurons != n_neurons:
        raise FormatError(
            f"recording {path}: data key {rec.data_key} with {rec.n_neurons} neurons; expected {data_key} "
            f"with {n_neurons} neurons as the run was trained"
        )
    return [int(i) for i in rec.neuron_ids], rec.image_shape


def recording_entry(description: dict, data_key: str) -> dict[str, Any]:
    """What a manifest says of one recording a run was trained on, graphs and metrics aside: neurons,
    their coordinates, input sizes, preprocessing, required inputs, response units."""
    pre = Preprocessing.from_dict(description["preprocessing"][data_key])
    neuron_ids, recording_size = _recording(
        description["recordings"][data_key], data_key, len(pre.response_std)
    )
    return {
        "n_neurons": len(neuron_ids),
        "neuron_ids": neuron_ids,
        "cortical_coordinates": description["coordinates"][data_key],
        "image_size": list(pre.image_size),
        "recording_image_size": list(recording_size),
        "preprocessing": pre.to_dict(),
        "requires": required_inputs(ModelConfig.from_dict(description["model"])),
        "response_units": RESPONSE_UNITS,
    }


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"out: {out} already exists; expected a new or empty folder (or force=True)")


def export_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: int = 1,
    opset: int | None = None,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Write the run's selected ensemble as an artifact folder at `out`; returns its path.

    Written into a temporary folder beside `out` and renamed into place at the end, so `out` is either
    the whole artifact or untouched. An existing non-empty `out` is replaced only with force=True.
    """
    run, out = Path(run_dir), Path(out)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput(f"version: {version!r}; expected an integer >= 1")
    _check_out(out, force)
    description, nets = load_members(run, selected_only=True)
    config = ModelConfig.from_dict(description["model"])
    name = name or config.name
    if not _SAFE_KEY.match(name):
        raise InvalidInput(f"name: {name!r}; expected letters, digits, '.', '_' or '-'")
    summary = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    indices = selected_members(run, description)
    for key in description["preprocessing"]:
        if not _SAFE_KEY.match(key):
            raise InvalidInput(f"data_key: {key!r}; expected letters, digits, '.', '_' or '-' (a file name)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        recordings = {}
        keys = tqdm(
            description["preprocessing"].items(), desc="export", unit="recording", disable=not progress
        )
        for key, pre_dict in keys:
            entry = recording_entry(description, key)  # before the export: a missing recording fails fast
            graphs = _export_key(nets, key, Preprocessing.from_dict(pre_dict), tmp, opset)
            recordings[key] = {**graphs, **entry, "test_metrics": summary.get("test", {}).get(key)}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "version": version,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "package_version": twin.__version__,
            "torch_version": torch.__version__,
            "onnx_version": _version("onnx"),
            "onnxscript_version": _version("onnxscript"),
            "data_keys": list(recordings),
            "members": [f"member-{i}" for i in indices],
            "model": description["model"],
            "training": description["train"],
            "validation_metrics": {
                k: summary[k] for k in ("validation_correlation", "selection_path") if k in summary
            },
            "recordings": recordings,
            "files": {
                p.name: {"sha256": checksum(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("artifact %s version %d written to %s", name, version, out)
    return out


def _export_key(nets: list[Twin], key: str, pre: Preprocessing, folder: Path, opset: int | None) -> dict:
    """Write the two graphs of one data key into `folder`; their names and inputs for the manifest."""
    responses = ResponseGraph(nets, key, pre).eval()
    gradient = GradientGraph(ResponseGraph([gradient_net(n) for n in nets], key, pre)).eval()
    height, width = pre.image_size
    batch = 2  # not 1: torch.export would specialize the batch dimension to a constant
    generator = torch.Generator().manual_seed(0)
    images = pre.image_mean + pre.image_std * torch.randn(batch, height, width, generator=generator)
    extra = {}
    if responses.uses["behavior"]:
        extra["behavior"] = torch.rand(batch, 3, generator=generator) * torch.as_tensor(pre.behavior_std)
    if responses.uses["pupil_center"]:
        extra["pupil_center"] = torch.as_tensor(pre.pupil_mean) + torch.randn(batch, 2, generator=generator)
    weights = torch.randn(batch, len(pre.response_std), generator=generator)
    files = {"responses": f"responses-{key}.onnx", "gradient": f"gradient-{key}.onnx"}
    with torch.no_grad(), ExportableResponses():
        _export_graph(responses, (images,), extra, OUTPUTS, folder / files["responses"], opset)
    with ExportableGradients():
        _export_graph(gradient, (images, weights), extra, ["gradient"], folder / files["gradient"], opset)
    io = {graph: _graph_io(folder / file) for graph, file in files.items()}
    return {
        "graphs": files,
        "inputs": {graph: io[graph]["inputs"] for graph in files},
        "outputs": {graph: io[graph]["outputs"] for graph in files},
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished folder to `out`; an existing `out` (with force) is moved aside first."""
    _check_out(out, force)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{tmp.name}.old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()
