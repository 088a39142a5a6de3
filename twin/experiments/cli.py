"""`twin experiment tuning|rf|mei SOURCE`: in-silico experiments from the command line.

SOURCE is an artifact folder (as `twin export` writes it), a served model's `host:port`, or a simulation
folder (`twin simulate`), whose ground-truth neurons then answer. Each command writes NAME.npz (every
array), NAME.json (per-neuron summary, parameters, and with --compare the scores against the simulated
mouse's ground truth) and NAME.png (with matplotlib) into --out, and prints a short report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from twin import open_twin
from twin.atomic import write_json
from twin.errors import InvalidInput

__all__ = ["experiment"]


def _numbers(name: str, width: int | None = None) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> np.ndarray | None:
        if value is None:
            return None
        try:
            numbers = np.array([float(v) for v in value.split(",")])
        except ValueError:
            raise click.BadParameter(f"{value!r}; expected comma-separated numbers") from None
        if width is not None and numbers.size != width:
            raise click.BadParameter(f"{value!r}; expected {width} comma-separated numbers ({name})")
        return numbers

    return parse


def _ids(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected comma-separated neuron ids") from None


def _common(command: Callable[..., None]) -> Callable[..., None]:
    """SOURCE and the options every experiment takes."""
    options = [
        click.argument("source"),
        click.option(
            "--out",
            type=click.Path(path_type=Path, file_okay=False),
            required=True,
            help="Folder for the results.",
        ),
        click.option(
            "--data-key", default=None, help="Recording (data key); needed when SOURCE has several."
        ),
        click.option("--model", default=None, help="Model name on a server that has several."),
        click.option(
            "--neurons", callback=_ids, default=None, help="Comma-separated neuron ids (default: all)."
        ),
        click.option(
            "--behavior",
            callback=_numbers("pupil, its change, running", 3),
            default=None,
            help="Behaviour to show the stimuli in: pupil,dpupil,running (raw units).",
        ),
        click.option(
            "--pupil-center",
            callback=_numbers("x, y", 2),
            default=None,
            help="Pupil centre to show the stimuli in: x,y (raw units).",
        ),
        click.option(
            "--compare",
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            default=None,
            help="Simulation folder: score the result against its ground-truth neurons.",
        ),
        click.option("--no-plot", is_flag=True, help="Skip the PNG."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def _finish(
    kind: str,
    result: Any,
    out: Path,
    source: str,
    parameters: dict,
    scores: dict | None,
    truth: dict | None,
    no_plot: bool,
    report: str,
) -> None:
    result.save(out / f"{kind}.npz")
    document = {"experiment": kind, "source": source, "parameters": parameters, "summary": result.summary()}
    if scores is not None:
        document["ground_truth"] = scores
    write_json(out / f"{kind}.json", document)
    written = [f"{kind}.npz", f"{kind}.json"]
    if not no_plot:
        from twin.experiments.plots import plot

        plot(result, out / f"{kind}.png", truth)
        written.append(f"{kind}.png")
    click.echo(report)
    if scores is not None:
        click.echo(
            "against the ground truth: "
            + ", ".join(f"{k} {_format(v)}" for k, v in scores.items() if not isinstance(v, list))
        )
    click.echo(f"wrote {', '.join(written)} to {out}")


def _format(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _truth(compare: Path | None, twin: Any, ids: np.ndarray) -> tuple[Any, dict | None]:
    if compare is None:
        return None, None
    from twin.experiments.ground_truth import GroundTruthTwin

    ground = GroundTruthTwin(compare, twin.info()["data_key"])
    return ground, ground.truth(ids)


@click.group()
def experiment() -> None:
    """In-silico experiments on a twin: tuning curves, receptive fields, most exciting images.

    \b
    SOURCE: an artifact folder, a served model's host:port, or a simulation folder (ground truth).
      twin experiment tuning models/cnn/1 --data-key 90001-1-1 --out tuning/ --compare sim/
      twin experiment mei localhost:8001 --neurons 3,7,12 --out meis/
    """


@experiment.command()
@_common
@click.option("--orientations", type=click.IntRange(min=2), default=16, show_default=True)
@click.option(
    "--periods",
    callback=_numbers("periods"),
    default="4,5.66,8,11.3,16",
    show_default=True,
    help="Grating periods, pixels per cycle of the model's input.",
)
@click.option("--phases", type=click.IntRange(min=2), default=8, show_default=True)
@click.option(
    "--amplitude",
    type=click.FloatRange(min=0),
    default=None,
    help="Grating amplitude, raw pixel units (default: sqrt(2) x the training images' sd).",
)
def tuning(
    source,
    out,
    data_key,
    model,
    neurons,
    behavior,
    pupil_center,
    compare,
    no_plot,
    orientations,
    periods,
    phases,
    amplitude,
) -> None:
    """Orientation and spatial-frequency tuning from full-field gratings."""
    from twin.experiments.tuning import orientation_tuning

    twin = open_twin(source, data_key, model)
    result = orientation_tuning(
        twin,
        neurons,
        orientations=orientations,
        periods=periods,
        phases=phases,
        amplitude=amplitude,
        behavior=behavior,
        pupil_center=pupil_center,
    )
    ground, truth = _truth(compare, twin, result.neuron_ids)
    selectivity = result.orientation_selectivity
    report = (
        f"tuning of {result.neuron_ids.size} neurons: orientation selectivity median "
        f"{np.median(selectivity):.3f}, {np.mean(selectivity >= 0.2):.0%} >= 0.2"
    )
    parameters = {
        "orientations": orientations,
        "periods": periods.tolist(),
        "phases": phases,
        "amplitude": result.amplitude,
    }
    _finish(
        "tuning",
        result,
        out,
        source,
        parameters,
        ground and ground.score_tuning(result),
        truth,
        no_plot,
        report,
    )


@experiment.command()
@_common
@click.option(
    "--square", type=click.IntRange(min=1), default=4, show_default=True, help="Square side, pixels."
)
@click.option("--stride", type=click.IntRange(min=1), default=2, show_default=True, help="Grid step, pixels.")
def rf(
    source, out, data_key, model, neurons, behavior, pupil_center, compare, no_plot, square, stride
) -> None:
    """Receptive fields mapped with sparse noise (black and white squares on gray)."""
    from twin.experiments.receptive_field import receptive_fields

    twin = open_twin(source, data_key, model)
    result = receptive_fields(
        twin, neurons, square=square, stride=stride, behavior=behavior, pupil_center=pupil_center
    )
    ground, truth = _truth(compare, twin, result.neuron_ids)
    report = (
        f"receptive fields of {result.neuron_ids.size} neurons on a {result.y.size} x {result.x.size} "
        f"grid of {square}-pixel squares"
    )
    _finish(
        "rf",
        result,
        out,
        source,
        {"square": square, "stride": stride},
        ground and ground.score_receptive_fields(result),
        truth,
        no_plot,
        report,
    )


@experiment.command()
@_common
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
    source,
    out,
    data_key,
    model,
    neurons,
    behavior,
    pupil_center,
    compare,
    no_plot,
    count,
    steps,
    step,
    rms_contrast,
    blur,
    start,
    seed,
) -> None:
    """Most exciting images: gradient ascent on each neuron's predicted response (needs a gradient)."""
    from twin.experiments.mei import most_exciting_images

    twin = open_twin(source, data_key, model)
    if neurons is None:
        if count is None:
            raise InvalidInput("neurons: none given; expected --neurons ID,... or --count N")
        neurons = twin.info()["neuron_ids"][:count]
    result = most_exciting_images(
        twin,
        neurons,
        steps=steps,
        step=step,
        rms_contrast=rms_contrast,
        blur=blur,
        start=start,
        seed=seed,
        behavior=behavior,
        pupil_center=pupil_center,
    )
    ground, truth = _truth(compare, twin, result.neuron_ids)
    gain = np.median(result.activation / np.maximum(result.start, 1e-12))
    report = (
        f"MEIs of {result.neuron_ids.size} neurons: predicted response median "
        f"{np.median(result.activation):.3g} ({gain:.3g}x the start), RMS contrast {result.rms_contrast:.3g}"
    )
    parameters = {
        "steps": steps,
        "step": step,
        "rms_contrast": result.rms_contrast,
        "blur": blur,
        "start": start,
        "seed": seed,
    }
    scores = None if ground is None else ground.score_meis(result, ground.natural_images())
    _finish("mei", result, out, source, parameters, scores, truth, no_plot, report)
