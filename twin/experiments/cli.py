"""`twin experiment tuning|rf|mei SOURCE`: in-silico experiments from the command line.

SOURCE is an artifact folder (as `twin export` writes it), a training run (in torch), a served model's
`host:port`, or a simulation folder (`twin simulate`), whose ground-truth neurons then answer. Each
command writes NAME.npz (every array), NAME.json (per-neuron summary, parameters, and with --compare the
scores against the simulated mouse's ground truth) and NAME.png (with matplotlib) into --out, and prints
a short report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from twin import open_twin
from twin.atomic import write_json
from twin.errors import InvalidInput

__all__ = ["experiment"]


def _numbers(
    name: str, width: int | None = None, *, mean: bool = False
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """Comma-separated numbers (`width` of them when given); with mean=True also the word "mean"."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | str | None:
        if value is None or (mean and value == "mean"):
            return value
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            expected = "comma-separated numbers" + (" or 'mean'" if mean else "")
            raise click.BadParameter(f"{value!r}; expected {expected}") from None
        if width is not None and len(numbers) != width:
            expected = f"{width} comma-separated numbers ({name})" + (" or 'mean'" if mean else "")
            raise click.BadParameter(f"{value!r}; expected {expected}")
        return numbers

    return parse


def _ids(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected comma-separated neuron ids") from None


@dataclass
class Setup:
    """SOURCE and the options every experiment takes, and what every experiment does with them."""

    source: str
    out: Path
    data_key: str | None
    model: str | None
    neurons: list[int] | None
    behavior: list[float] | str | None
    pupil_center: list[float] | str | None
    compare: Path | None
    no_plot: bool
    _twin: Any = None

    @property
    def twin(self) -> Any:
        if self._twin is None:
            self._twin = open_twin(self.source, self.data_key, self.model)
        return self._twin

    @property
    def condition(self) -> dict[str, Any]:
        return {"behavior": self.behavior, "pupil_center": self.pupil_center}

    def finish(self, kind: str, result: Any, parameters: dict, report: str) -> None:
        """Write KIND.npz, KIND.json (with ground-truth scores under --compare) and KIND.png; report."""
        scores = truth = None
        if self.compare is not None:
            from twin.experiments.ground_truth import GroundTruthTwin

            ground = GroundTruthTwin(self.compare, self.twin.info()["data_key"])
            if kind == "tuning":
                scores = ground.score_tuning(result)
            elif kind == "rf":
                scores = ground.score_receptive_fields(result)
            elif kind == "size":
                scores = ground.score_size_tuning(result)
            else:
                scores = ground.score_meis(result, ground.natural_images())
            truth = ground.truth(result.neuron_ids)
        result.save(self.out / f"{kind}.npz")
        from twin.experiments.common import Condition

        condition = Condition.of(self.behavior, self.pupil_center, self.twin.info()).to_json()
        document = {"experiment": kind, "source": self.source, "parameters": parameters}
        document["condition"] = condition  # the resolved values (raw units), also of "mean"
        document |= {"summary": result.summary()} | ({} if scores is None else {"ground_truth": scores})
        write_json(self.out / f"{kind}.json", document)
        written = [f"{kind}.npz", f"{kind}.json"]
        if not self.no_plot:
            from twin.experiments.plots import plot

            plot(result, self.out / f"{kind}.png", truth)
            written.append(f"{kind}.png")
        click.echo(report)
        if scores is not None:
            shown = (f"{k} {_format(v)}" for k, v in scores.items() if not isinstance(v, list))
            click.echo("against the ground truth: " + ", ".join(shown))
        click.echo(f"wrote {', '.join(written)} to {self.out}")


_SETUP_OPTIONS = [
    click.argument("source"),
    click.option(
        "--out",
        type=click.Path(path_type=Path, file_okay=False),
        required=True,
        help="Folder for the results.",
    ),
    click.option("--data-key", default=None, help="Recording (data key); needed when SOURCE has several."),
    click.option("--model", default=None, help="Model name on a server that has several."),
    click.option("--neurons", callback=_ids, default=None, help="Comma-separated neuron ids (default: all)."),
    click.option(
        "--behavior",
        callback=_numbers("pupil, its change, running", 3, mean=True),
        default=None,
        help="Behaviour to show the stimuli in: pupil,dpupil,running (raw units), or 'mean' (the "
        "training trials' mean).",
    ),
    click.option(
        "--pupil-center",
        callback=_numbers("x, y", 2, mean=True),
        default=None,
        help="Pupil centre to show the stimuli in: x,y (raw units), or 'mean'.",
    ),
    click.option(
        "--compare",
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        default=None,
        help="Simulation folder: score the result against its ground-truth neurons.",
    ),
    click.option("--no-plot", is_flag=True, help="Skip the PNG."),
]
_SETUP_FIELDS = (
    "source",
    "out",
    "data_key",
    "model",
    "neurons",
    "behavior",
    "pupil_center",
    "compare",
    "no_plot",
)


def _setup(command: Callable[..., None]) -> Callable[..., None]:
    """Adds SOURCE and the shared options, handed to the command as one `Setup`."""

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        setup = Setup(**{name: kwargs.pop(name) for name in _SETUP_FIELDS})
        command(setup, **kwargs)

    return functools.reduce(lambda f, option: option(f), reversed(_SETUP_OPTIONS), run)


def _format(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


_AMPLITUDE = click.option(
    "--amplitude",
    type=click.FloatRange(min=0),
    default=None,
    help="Grating amplitude, raw pixel units (default: sqrt(2) x the training images' sd).",
)


@click.group()
def experiment() -> None:
    """In-silico experiments on a twin: tuning curves, receptive fields, size tuning, most exciting images.

    \b
    SOURCE: an artifact folder, a training run (torch), a served model's host:port, or a simulation
    folder (its ground-truth neurons).
      twin experiment tuning models/cnn/1 --data-key 90001-1-1 --out tuning/ --compare sim/
      twin experiment mei localhost:8001 --neurons 3,7,12 --out meis/
    """


@experiment.command()
@_setup
@click.option("--orientations", type=click.IntRange(min=2), default=16, show_default=True)
@click.option(
    "--periods",
    callback=_numbers("periods"),
    default="4,5.66,8,11.3,16",
    show_default=True,
    help="Grating periods, pixels per cycle of the model's input.",
)
@click.option("--phases", type=click.IntRange(min=2), default=8, show_default=True)
@_AMPLITUDE
def tuning(
    setup: Setup, orientations: int, periods: list[float], phases: int, amplitude: float | None
) -> None:
    """Orientation and spatial-frequency tuning from full-field gratings."""
    import numpy as np

    from twin.experiments.tuning import orientation_tuning

    result = orientation_tuning(
        setup.twin,
        setup.neurons,
        orientations=orientations,
        periods=periods,
        phases=phases,
        amplitude=amplitude,
        **setup.condition,
    )
    selectivity = result.orientation_selectivity
    report = (
        f"tuning of {result.neuron_ids.size} neurons: orientation selectivity median "
        f"{np.median(selectivity):.3f}, {np.mean(selectivity >= 0.2):.0%} >= 0.2"
    )
    parameters = {"orientations": orientations, "periods": periods, "phases": phases}
    setup.finish("tuning", result, parameters | {"amplitude": result.amplitude}, report)


@experiment.command()
@_setup
@click.option(
    "--square", type=click.IntRange(min=1), default=4, show_default=True, help="Square side, pixels."
)
@click.option("--stride", type=click.IntRange(min=1), default=2, show_default=True, help="Grid step, pixels.")
def rf(setup: Setup, square: int, stride: int) -> None:
    """Receptive fields mapped with sparse noise (black and white squares on gray)."""
    from twin.experiments.receptive_field import receptive_fields

    result = receptive_fields(setup.twin, setup.neurons, square=square, stride=stride, **setup.condition)
    report = (
        f"receptive fields of {result.neuron_ids.size} neurons on a {result.y.size} x {result.x.size} "
        f"grid of {square}-pixel squares"
    )
    setup.finish("rf", result, {"square": square, "stride": stride}, report)


@experiment.command()
@_setup
@click.option(
    "--diameters",
    callback=_numbers("diameters"),
    default=None,
    help="Aperture diameters, pixels of the model's input, increasing (default: 9 from 2 to 60).",
)
@click.option("--phases", type=click.IntRange(min=1), default=8, show_default=True)
@_AMPLITUDE
def size(setup: Setup, diameters: list[float] | None, phases: int, amplitude: float | None) -> None:
    """Size tuning and surround suppression: gratings in growing apertures on each receptive field.

    Each neuron's centre, orientation and period are measured first (sparse noise, full-field gratings).
    """
    import numpy as np

    from twin.experiments.size import DIAMETERS, size_tuning

    result = size_tuning(
        setup.twin,
        setup.neurons,
        diameters=DIAMETERS if diameters is None else diameters,
        phases=phases,
        amplitude=amplitude,
        **setup.condition,
    )
    index = result.suppression_index
    shown = "-" if np.all(np.isnan(index)) else f"{np.nanmedian(index):.3f}"
    report = (
        f"size tuning of {result.neuron_ids.size} neurons: preferred diameter median "
        f"{np.nanmedian(result.preferred_diameter):.3g} px, suppression index median {shown}"
    )
    parameters = {"diameters": result.diameters.tolist(), "phases": phases, "amplitude": result.amplitude}
    setup.finish("size", result, parameters, report)


@experiment.command()
@_setup
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="Without --neurons: the first COUNT neurons."
)
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--step",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.1,
    show_default=True,
    help="Step size, a fraction of the contrast budget.",
)
@click.option(
    "--rms-contrast",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Contrast budget, raw pixel units (default: the training images' sd).",
)
@click.option(
    "--blur",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Gradient smoothing, pixels (0: none).",
)
@click.option("--start", type=click.Choice(["noise", "gray"]), default="noise", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def mei(
    setup: Setup,
    count: int | None,
    steps: int,
    step: float,
    rms_contrast: float | None,
    blur: float,
    start: str,
    seed: int,
) -> None:
    """Most exciting images: gradient ascent on each neuron's predicted response (needs a gradient)."""
    import numpy as np

    from twin.experiments.mei import most_exciting_images

    neurons = setup.neurons
    if neurons is None:
        if count is None:
            raise InvalidInput("neurons: none given; expected --neurons ID,... or --count N")
        neurons = setup.twin.info()["neuron_ids"][:count]
    result = most_exciting_images(
        setup.twin,
        neurons,
        steps=steps,
        step=step,
        rms_contrast=rms_contrast,
        blur=blur,
        start=start,
        seed=seed,
        **setup.condition,
    )
    gain = np.median(result.activation / np.maximum(result.start, 1e-12))
    report = (
        f"MEIs of {result.neuron_ids.size} neurons: predicted response median "
        f"{np.median(result.activation):.3g} ({gain:.3g}x the start), RMS contrast {result.rms_contrast:.3g}"
    )
    parameters = {"steps": steps, "step": step, "rms_contrast": result.rms_contrast, "blur": blur}
    setup.finish("mei", result, parameters | {"start": start, "seed": seed}, report)
