"""Per-recording shifter: eye position -> one shift of every readout position (gaze moves the image).

neuralpredictors' MLPShifter as the SENSORIUM+ baseline builds it (hidden_channels_shifter=5,
shift_layers=3): Linear 2->5, tanh, Linear 5->5, tanh, Linear 5->2, tanh. Its `initialize` never
matches a layer (it tests parameters with isinstance nn.Linear), so the layers keep PyTorch's default
init, as here; gamma_shifter is 0 there, so the regularizer is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twin.errors import InvalidInput

__all__ = ["Shifter"]


class Shifter(nn.Module):
    """MLP pupil_center (B, 2) -> shift (B, 2) in readout grid units, bounded by the final tanh."""

    def __init__(self, hidden: int = 5, layers: int = 3):
        super().__init__()
        if hidden < 1:
            raise InvalidInput(f"hidden: {hidden}; expected >= 1")
        if layers < 1:
            raise InvalidInput(f"layers: {layers}; expected >= 1")
        modules: list[nn.Module] = []
        width = 2
        for _ in range(layers - 1):
            modules += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        modules += [nn.Linear(width, 2), nn.Tanh()]
        self.mlp = nn.Sequential(*modules)

    def forward(self, pupil_center: Tensor) -> Tensor:
        if pupil_center.ndim != 2 or pupil_center.shape[1] != 2:
            raise InvalidInput(f"pupil_center: shape {tuple(pupil_center.shape)}; expected (B, 2)")
        return self.mlp(pupil_center)  # (B, 2)

    def regularizer(self) -> Tensor:
        """0: the baseline does not regularize the shifter (gamma_shifter=0)."""
        return torch.zeros((), device=self.mlp[0].weight.device)
