"""Per-recording modulator: behaviour -> one multiplicative gain per neuron on the predicted firing rate.

The SENSORIUM+ winner's largest single gain came from a modulator (SENSORIUM.md §5); theirs also read
response history and network state, which our trials cannot give (files are in random order and the
presentation order is hashed), so this one reads the 3 behaviour values only. Running and pupil-linked
arousal scale V1 responses multiplicatively (and the simulated mouse applies gain * rate with
log-gain linear in behaviour), so the gain is exp(log-gain) and multiplies the rate after ELU + 1: a
gain before the ELU + 1 would scale the readout's drive, not the rate, and would change the rate's
baseline of 1 too. The product stays positive, so the Poisson loss is unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twin.errors import InvalidInput

__all__ = ["MAX_LOG_GAIN", "Modulator"]

# Log-gains are squashed smoothly into (-3, 3): gains in (0.05, 20), the simulated mouse clips at
# +-4; an unbounded exp could overflow from one outlying behaviour value early in training.
MAX_LOG_GAIN = 3.0


class Modulator(nn.Module):
    """MLP behavior (B, 3) -> gain (B, N) = exp(3 tanh(log-gain / 3)), log-gain = Linear(ELU(Linear(.))).

    The last layer starts at zero, so the gain is exactly 1 at initialization: a fresh model predicts
    what the same model without a modulator predicts, and the gain is learned from there.
    """

    def __init__(self, n_neurons: int, hidden: int = 16):
        super().__init__()
        if n_neurons < 1:
            raise InvalidInput(f"n_neurons: {n_neurons}; expected >= 1")
        if hidden < 1:
            raise InvalidInput(f"hidden: {hidden}; expected >= 1")
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.ELU(), nn.Linear(hidden, n_neurons))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, behavior: Tensor) -> Tensor:
        if behavior.ndim != 2 or behavior.shape[1] != 3:
            raise InvalidInput(f"behavior: shape {tuple(behavior.shape)}; expected (B, 3)")
        log_gain = self.mlp(behavior)  # (B, N)
        return torch.exp(MAX_LOG_GAIN * torch.tanh(log_gain / MAX_LOG_GAIN))  # (B, N)

    def regularizer(self) -> Tensor:
        """0: the gain is left free; the identity start and the bounded log-gain keep it tame."""
        return torch.zeros((), device=self.mlp[0].weight.device)
