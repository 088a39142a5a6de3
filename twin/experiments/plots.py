"""PNG figures of experiment results, for a person to look at: up to 16 neurons per figure. Needs
matplotlib (the `train` extra, or `pip install matplotlib`); the experiments themselves do not."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from twin.atomic import replacing
from twin.errors import InvalidInput
from twin.experiments.mei import MEIs
from twin.experiments.receptive_field import ReceptiveFields
from twin.experiments.size import SizeTuning
from twin.experiments.tuning import Tuning

__all__ = ["plot", "plot_meis", "plot_receptive_fields", "plot_size_tuning", "plot_tuning"]

MAX_PANELS = 16


def _figure(n: int, draw: Callable[[Any, int], None], path: str | os.PathLike[str], title: str) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise InvalidInput("plot: matplotlib is not installed; expected `pip install matplotlib`") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(n, MAX_PANELS)
    cols = min(shown, 4)
    rows = -(-shown // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, layout="constrained"
    )
    for k, ax in enumerate(axes.ravel()):
        if k < shown:
            draw(ax, k)
        else:
            ax.axis("off")
    fig.suptitle(title + (f" (first {shown} of {n})" if n > shown else ""))
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return Path(path)


def plot_tuning(tuning: Tuning, path: str | os.PathLike[str], truth: dict | None = None) -> Path:
    """Orientation tuning curves at the preferred period; the true orientation as a dashed line."""
    degrees = np.degrees(tuning.orientations)
    curves, preferred = tuning.curves, np.degrees(tuning.preferred_orientation)

    def draw(ax: Any, k: int) -> None:
        ax.plot(degrees, curves[k], marker=".")
        ax.axvline(preferred[k], color="C1", lw=1)
        if truth is not None:
            ax.axvline(np.degrees(truth["orientation"][k]), color="k", ls="--", lw=1)
        ax.set_title(f"neuron {tuning.neuron_ids[k]}", fontsize=9)
        ax.set_xlabel("orientation (deg)", fontsize=8)

    return _figure(
        tuning.neuron_ids.size,
        draw,
        path,
        "orientation tuning, response above gray (orange: preferred" + (", dashed: true)" if truth else ")"),
    )


def plot_receptive_fields(
    fields: ReceptiveFields, path: str | os.PathLike[str], truth: dict | None = None
) -> Path:
    """ON - OFF maps with the mapped centre (+) and, given the truth, the true one (x)."""
    signed, centers = fields.on - fields.off, fields.centers
    extent = (fields.x[0], fields.x[-1], fields.y[-1], fields.y[0])
    scale = np.array([36 / float(fields.image_size[0])] * 2)  # truth: pixels of the 36 x 64 grid

    def draw(ax: Any, k: int) -> None:
        limit = np.abs(signed[k]).max() or 1.0
        ax.imshow(signed[k], cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent)
        ax.plot(*centers[k], "k+", ms=10)
        if truth is not None:
            ax.plot(*(truth["center"][k] / scale), "gx", ms=8)
        ax.set_title(f"neuron {fields.neuron_ids[k]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    return _figure(
        fields.neuron_ids.size,
        draw,
        path,
        "sparse-noise receptive fields, ON - OFF (+: mapped centre" + (", x: true)" if truth else ")"),
    )


def plot_meis(meis: MEIs, path: str | os.PathLike[str]) -> Path:
    """The images, gray-centred, with each neuron's predicted response."""
    limit = float(np.abs(meis.images - meis.gray).max()) or 1.0

    def draw(ax: Any, k: int) -> None:
        ax.imshow(meis.images[k], cmap="gray", vmin=meis.gray - limit, vmax=meis.gray + limit)
        ax.set_title(f"neuron {meis.neuron_ids[k]}: {meis.activation[k]:.3g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    return _figure(meis.neuron_ids.size, draw, path, "most exciting images (predicted response)")


def plot_size_tuning(sizes: SizeTuning, path: str | os.PathLike[str]) -> Path:
    """Response above gray against aperture diameter (log axis), the preferred diameter marked."""
    curves, preferred, index = sizes.curves, sizes.preferred_diameter, sizes.suppression_index

    def draw(ax: Any, k: int) -> None:
        ax.semilogx(sizes.diameters, curves[k], marker=".")
        if not np.isnan(preferred[k]):
            ax.axvline(preferred[k], color="C1", lw=1)
        suppression = "-" if np.isnan(index[k]) else f"{index[k]:.2f}"
        ax.set_title(f"neuron {sizes.neuron_ids[k]}: SI {suppression}", fontsize=9)
        ax.set_xlabel("diameter (px)", fontsize=8)

    return _figure(sizes.neuron_ids.size, draw, path, "size tuning, response above gray (orange: preferred)")


def plot(
    result: Tuning | ReceptiveFields | MEIs | SizeTuning,
    path: str | os.PathLike[str],
    truth: dict | None = None,
) -> Path:
    """The figure for any experiment result."""
    if isinstance(result, Tuning):
        return plot_tuning(result, path, truth)
    if isinstance(result, ReceptiveFields):
        return plot_receptive_fields(result, path, truth)
    if isinstance(result, SizeTuning):
        return plot_size_tuning(result, path)
    return plot_meis(result, path)
