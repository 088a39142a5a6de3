"""In-silico experiments on any twin (DESIGN.md §3): the same code runs on an in-process artifact
(`twin.load(...).twin(key)`), a served model (`twin.TwinClient`) and the simulated mouse's ground truth
(`GroundTruthTwin`), so a twin's answers can be checked against the known ones.

- `orientation_tuning`: full-field gratings -> preferred orientation and period, selectivity, F1/F0.
- `receptive_fields`: sparse noise -> ON/OFF maps and receptive-field centres.
- `most_exciting_images`: gradient ascent on the image under a contrast budget (needs `gradient`).
- `size_tuning`: gratings in growing apertures on each receptive field -> preferred size, surround
  suppression.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twin.experiments.common import Condition, Predictor, Result, Twin
    from twin.experiments.ground_truth import GroundTruthTwin
    from twin.experiments.mei import MEIs, most_exciting_images
    from twin.experiments.receptive_field import ReceptiveFields, receptive_fields
    from twin.experiments.size import SizeTuning, size_tuning
    from twin.experiments.tuning import Tuning, orientation_tuning

# name -> the module that holds it: imported on first use, so that the `twin` command (which registers
# `twin experiment` from twin.experiments.cli) does not load numpy and the data package at start-up
_HOME = {
    "Condition": "common",
    "Predictor": "common",
    "Result": "common",
    "Twin": "common",
    "GroundTruthTwin": "ground_truth",
    "MEIs": "mei",
    "most_exciting_images": "mei",
    "ReceptiveFields": "receptive_field",
    "receptive_fields": "receptive_field",
    "SizeTuning": "size",
    "size_tuning": "size",
    "Tuning": "tuning",
    "orientation_tuning": "tuning",
}

__all__ = [
    "Condition",
    "GroundTruthTwin",
    "MEIs",
    "Predictor",
    "ReceptiveFields",
    "Result",
    "SizeTuning",
    "Tuning",
    "Twin",
    "most_exciting_images",
    "orientation_tuning",
    "receptive_fields",
    "size_tuning",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'twin.experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(f"twin.experiments.{_HOME[name]}"), name)
