"""A training run's ensemble behind the twin interface, in torch (DESIGN.md §3: the torch twin).

`TorchTwin(run_dir, data_key)` answers `predict`, `predict_members` and `gradient` like the exported
artifact will (same input checks, `twin.artifact.CheckedTwin`; same preprocessing and ensemble,
`training.export.ResponseGraph`), with the members' own weights and torch autograd: in-silico experiments
on a run before it is exported, and the reference the exported graphs are held to.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from training.data import Preprocessing
from training.export import ResponseGraph, gradient_net, recording_entry
from training.models import ModelConfig
from training.run import load_members, selected_members
from twin.artifact import CheckedTwin
from twin.errors import InvalidInput, ModelNotFound

__all__ = ["TorchTwin"]


class TorchTwin(CheckedTwin):
    """One recording's ensemble (the run's selected members) on `device`."""

    def __init__(self, run_dir: str | os.PathLike[str], data_key: str | None = None, *, device: str = "cpu"):
        run = Path(run_dir)
        description, nets = load_members(run, device, selected_only=True)
        keys = list(description["preprocessing"])
        if data_key is None:
            if len(keys) != 1:
                raise InvalidInput(f"data_key: None; run {run} was trained on {keys}, pick one")
            data_key = keys[0]
        if data_key not in keys:
            raise ModelNotFound(f"data_key: {data_key!r}; run {run} was trained on {keys}")
        pre = Preprocessing.from_dict(description["preprocessing"][data_key])
        self.device = torch.device(device)
        self.graph = ResponseGraph(nets, data_key, pre).to(self.device).eval().requires_grad_(False)
        # Differentiated with batch norm folded into the convs, as the exported gradient graph is: torch's
        # CPU batch-norm backward in eval mode is wrong at batch 1 for channels-last gradients.
        folded = [gradient_net(net) for net in nets]
        self.gradient_graph = ResponseGraph(folded, data_key, pre).to(self.device).eval()
        members = [f"member-{i}" for i in selected_members(run, description)]
        name = ModelConfig.from_dict(description["model"]).name
        super().__init__(name, 0, data_key, recording_entry(description, data_key), members, len(nets))

    def _tensors(self, feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor | None]:
        return {
            name: None if name not in feed else torch.from_numpy(feed[name]).to(self.device)
            for name in ("images", "behavior", "pupil_center")
        }

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = self._tensors(feed)
        with torch.no_grad():
            outputs = self.graph(x["images"], x["behavior"], x["pupil_center"])
        return [t.float().cpu().numpy() for t in outputs]

    def run_gradient(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        x = self._tensors(feed)
        weights = torch.from_numpy(feed["weights"]).to(self.device)
        with torch.enable_grad():
            images = x["images"].clone().requires_grad_(True)  # type: ignore[union-attr]
            mean, _, _ = self.gradient_graph(images, x["behavior"], x["pupil_center"])
            (gradient,) = torch.autograd.grad((mean * weights).sum(), images)
        return gradient.float().cpu().numpy()

    def __repr__(self) -> str:
        return f"TorchTwin({self.name!r}, data_key={self.data_key!r}, members={self.n_members})"
