"""The `twin` command. Every error a user can cause ends in one line on stderr and exit status 2."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from twin.errors import TwinError
from twin.experiments.cli import experiment

__all__ = ["main"]


class _Group(click.Group):
    """Turns TwinError into a one-line message and exit status 2 (click's own usage errors also exit 2),
    and a file-system error (OSError) into one naming the path, with exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TwinError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except OSError as exc:  # a path that cannot be read or written: say which, without a traceback
            paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
            click.echo(f"error: {paths + ': ' if paths else ''}{exc.strerror or exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="twin")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """twin: a digital twin of mouse primary visual cortex (SENSORIUM 2022).

    \b
    Start with a simulated mouse, then look at what was written:
      twin simulate --preset tiny --out sim/
      twin data inspect sim/
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@cli.command()
@click.option(
    "--preset",
    type=click.Choice(["tiny", "small", "sensorium"]),
    default="tiny",
    show_default=True,
    help="tiny: seconds, for tests; small: 2 recordings x 1,000 neurons; sensorium: 7 at benchmark scale.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder to write (must be new or empty)."
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Same seed, same mouse."
)
@click.option("--force", is_flag=True, help="Replace --out if it already holds something.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def simulate(preset: str, out: Path, seed: int, force: bool, quiet: bool) -> None:
    """Write a simulated mouse: SENSORIUM-layout recordings with known ground truth.

    Prints, per recording, the FEV distribution and the oracle ceilings: the ground-truth expected
    responses scored with the benchmark's metrics, i.e. the best any model could do.
    """
    from twin.data import simulate as run

    summary = run(preset, out, seed, overwrite=force, progress=not quiet)
    click.echo(format_ceilings(summary, out))


def _scores(s: dict) -> str:
    feve = "-" if s["feve"] is None else f"{s['feve']:.3f}"
    return f"{s['single_trial_correlation']:.3f} / {s['correlation_to_average']:.3f} / {feve}"


def format_ceilings(summary: dict, out: Path) -> str:
    """The table `twin simulate` prints: reliability and ceilings per recording and repeated tier."""
    first = (
        f"  {'data key':<10} {'role':<10} {'tier':<10} {'neurons':>7} {'FEV>=.15':>8} {'FEV q1/med/q3':>14} "
        f"{'oracle':>6}"
    )
    lines = [
        f"simulated mouse ({summary['preset']} preset, seed {summary['seed']}) in {out}",
        f"{first} | {'ceiling, image only':<21} | ceiling, with behaviour",
        f"  {'':<{len(first) - 2}} | {'single / avg / FEVE':<21} | single / avg / FEVE",
    ]
    for rec in summary["recordings"]:
        for tier, c in rec["ceilings"].items():
            quartiles = "{:.2f}/{:.2f}/{:.2f}".format(*c["fev_quartiles"])
            lines.append(
                f"  {rec['data_key']:<10} {rec['role']:<10} {tier:<10} {rec['neurons']:>7} "
                f"{c['fev_fraction_ge_0.15']:>8.2f} {quartiles:>14} {c['oracle_correlation']:>6.3f} | "
                f"{_scores(c['image_only']):<21} | {_scores(c['with_behavior'])}"
            )
    lines.append(
        "  (FEVE above 1 'with behaviour': behaviour-driven variance across repeats counts as noise in FEV)"
    )
    return "\n".join(lines)


@cli.group()
def data() -> None:
    """Read, check and summarize SENSORIUM recordings (folders or .zip files)."""


def _recording_paths(path: Path) -> list[Path]:
    """PATH itself if it is a recording (folder or zip), else the recordings directly inside it."""
    from twin.data.source import open_source

    if path.is_file() or (path / "data").is_dir() or not path.is_dir():
        return [path]
    inner = sorted(
        p
        for p in path.iterdir()
        if (p.is_dir() and (p / "data").is_dir() and (p / "meta").is_dir()) or p.suffix == ".zip"
    )
    if not inner:
        open_source(path)  # raises the precise "not a recording folder" error
    return inner or [path]


@data.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--held-out",
    "held_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of held-out responses (default: <PATH>/held_out/<data key> when present).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(path: Path, held_out: Path | None, as_json: bool) -> None:
    """Summarize a recording, or every recording in a folder.

    Trials per tier, repeats per test image, neurons, behaviour ranges, and the test tier's reliability
    (FEV, jackknife oracle correlation), from held-out responses when the recording ships them zeroed.
    """
    from twin.data import find_held_out, format_summary, load_held_out, load_recording, summarize

    summaries = []
    for recording_path in _recording_paths(path):
        recording = load_recording(recording_path, progress=False)
        found = held_out or find_held_out(recording_path, recording.data_key)
        summaries.append(summarize(recording, load_held_out(found) if found else None))
    if as_json:
        click.echo(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=1))
        return
    click.echo("\n\n".join(format_summary(s) for s in summaries))
    simulation = path / "simulation.json"
    if simulation.is_file():
        click.echo("\n" + format_ceilings(json.loads(simulation.read_text()), path))


@data.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Check a recording (or each recording in a folder) against the SENSORIUM layout.

    Exit status 0 when valid; otherwise one line naming the file and what was expected, and status 2.
    """
    from twin.data import load_recording

    for recording_path in _recording_paths(path):
        rec = load_recording(recording_path, progress=False)
        counts = ", ".join(f"{k} {v}" for k, v in rec.tier_counts().items())
        click.echo(f"ok  {rec.data_key}: {rec.n_trials} trials ({counts}), {rec.n_neurons} neurons")


_data_option = click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="A recording (folder or .zip) or a folder of recordings; repeat for more.",
)


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    return [p for path in paths for p in _recording_paths(path)]


@cli.command()
@_data_option
@click.option(
    "--model",
    default="cnn",
    show_default=True,
    help="A registered model (ln, cnn, cnn_behavior, twin, twin_behavior) or a model .json.",
)
@click.option("--members", type=click.IntRange(min=1), default=1, show_default=True, help="Ensemble size.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option(
    "--epochs", type=click.IntRange(min=1), default=200, show_default=True, help="At most this many."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=0.009,
    show_default=True,
    help="Adam's learning rate; the default is the reference's for batch 128: scale it with --batch-size "
    "(e.g. x batch / 128; at 0.009, batch 32 can fail to train a narrow model on few trials).",
)
@click.option(
    "--correlation-weight",
    type=click.FloatRange(min=0),
    default=None,
    help="Add weight x (1 - correlation) to the Poisson loss.  [default: the model's: 1 for twin and "
    "twin_behavior, 0 for the baselines]",
)
@click.option(
    "--correlation-rounds",
    type=click.IntRange(min=1),
    default=None,
    help="Keep the correlation term for this many learning-rate rounds (1: until the first decay), the "
    "Poisson loss alone after them.  [default: the model's: throughout]",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--amp/--no-amp", default=False, help="bf16 autocast of the forward pass.")
@click.option(
    "--channels-last/--no-channels-last",
    default=True,
    show_default=True,
    help="NHWC memory layout for the convolutions (same arithmetic, faster).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train members in this many processes (torchrun on this machine).",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Fine-tune: start every member from this run's weights (e.g. a core pre-trained on all recordings).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue each member from its last checkpoint, with the settings the run started with "
    "(only --device, --amp, --channels-last and --epochs may change).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(
    data,
    model,
    members,
    out,
    epochs,
    batch_size,
    lr,
    correlation_weight,
    correlation_rounds,
    seed,
    device,
    amp,
    channels_last,
    nproc,
    init_from,
    resume,
    quiet,
) -> None:
    """Train a model (or an ensemble) on SENSORIUM recordings.

    Early-stopped on each recording's validation tier with the reference recipe; a checkpoint after every
    epoch, so --resume continues a killed run. Ensembles keep the validation tier for greedy member
    selection. Under torchrun (or with --nproc) members train in parallel processes.
    """
    if nproc > 1:
        from training.distributed import launch

        launch(
            nproc,
            data=data,
            model=model,
            members=members,
            out=out,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            correlation_weight=correlation_weight,
            correlation_rounds=correlation_rounds,
            seed=seed,
            device=device,
            amp=amp,
            channels_last=channels_last,
            init_from=init_from,
            resume=resume,
        )
        return
    from training.distributed import init_from_env, is_rank_zero, shutdown
    from training.run import train_run
    from training.trainer import TrainConfig

    device = init_from_env(device)
    rank_zero = is_rank_zero()
    config = TrainConfig(
        lr=lr,
        batch_size=batch_size,
        max_epochs=epochs,
        seed=seed,
        device=device,
        correlation_weight=correlation_weight,
        correlation_rounds=correlation_rounds,
        amp=amp,
        channels_last=channels_last,
    )
    try:
        train_run(
            _expand(data),
            model,
            out,
            members=members,
            config=config,
            resume=resume,
            progress=not quiet and rank_zero,
            init_from=init_from,
        )
    finally:
        shutdown()
    if rank_zero:
        _print_run(out)


def _print_run(out: Path) -> None:
    summary = json.loads((Path(out) / "metrics.json").read_text())
    for name, value in summary["validation_correlation"]["members"].items():
        click.echo(f"{name}: validation correlation {value:.4f}")
    click.echo(
        f"ensemble of {', '.join(summary['selected'])}: validation correlation "
        f"{summary['validation_correlation']['ensemble']:.4f}"
    )
    for key, scores in summary.get("test", {}).items():
        e = scores["ensemble"]
        click.echo(
            f"test {key}: single-trial {e['single_trial_correlation']:.3f}, "
            f"to average {e['correlation_to_average']:.3f}"
        )
    click.echo(f"run written to {out}")


def _score_table(results: dict[str, dict], tier: str) -> str:
    """The benchmark's three metrics, one line per data key."""
    lines = [f"{'data key':<12} {'tier':<10} {'single-trial':>12} {'to average':>10} {'FEVE':>6}"]
    for key, r in results.items():
        feve = "-" if r["feve"] is None else f"{r['feve']:.3f}"
        lines.append(
            f"{key:<12} {tier:<10} {r['single_trial_correlation']:>12.3f} "
            f"{r['correlation_to_average']:>10.3f} {feve:>6}"
        )
    return "\n".join(lines)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_data_option
@click.option(
    "--tier",
    type=click.Choice(["train", "validation", "test", "final_test"]),
    default="test",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--device", default="cpu", show_default=True, help="Where the members predict: cpu, cuda, ...")
def evaluate(run_dir: Path, data, tier: str, as_json: bool, device: str) -> None:
    """Score a trained run on a tier: single-trial correlation, correlation to average, FEVE.

    Held-out responses are read from <parent>/held_out/<data key> when the recording ships them zeroed.
    """
    from training.run import evaluate as run_evaluate

    results = run_evaluate(run_dir, _expand(data), tier, device)
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    click.echo(_score_table(results, tier))


@cli.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Artifact folder to write (new or empty)."
)
@click.option("--name", default=None, help="Artifact name (default: the model's name).")
@click.option("--version", type=click.IntRange(min=1), default=1, show_default=True, help="Artifact version.")
@click.option("--force", is_flag=True, help="Replace --out if it already holds something.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export_artifact(
    run_dir: Path, out: Path, name: str | None, version: int, force: bool, quiet: bool
) -> None:
    """Export a trained run as a served artifact: ONNX graphs and a checksummed manifest.

    Per recording, one graph of the selected ensemble (raw images in, mean, std and members out on the
    recording's response scale) and one of its input gradient. Written atomically.
    """
    from training.export import export_run

    path = export_run(run_dir, out, name=name, version=version, force=force, progress=not quiet)
    manifest = json.loads((path / "manifest.json").read_text())
    size = sum(f["bytes"] for f in manifest["files"].values())
    click.echo(
        f"artifact {manifest['name']} version {manifest['version']}: {len(manifest['members'])} members, "
        f"data keys {', '.join(manifest['data_keys'])}, {size / 1e6:.1f} MB, written to {path}"
    )


@cli.command()
@click.argument("source")
@click.option(
    "--images",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help=".npy of (n, H, W) or (n, 1, H, W) raw pixels; read memory-mapped.",
)
@click.option("--behavior", type=click.Path(path_type=Path, dir_okay=False, exists=True), help=".npy (n, 3).")
@click.option(
    "--pupil-center", type=click.Path(path_type=Path, dir_okay=False, exists=True), help=".npy (n, 2)."
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Responses .npy.")
@click.option("--std-out", type=click.Path(path_type=Path, dir_okay=False), help="Ensemble std .npy, too.")
@click.option("--data-key", default=None, help="Recording (data key); needed when SOURCE has several.")
@click.option("--model", default=None, help="Model name on a server that has several.")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True, help="Images per call.")
@click.option("--restart", is_flag=True, help="Begin anew instead of resuming an unfinished run.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(
    source: str,
    images: Path,
    behavior: Path | None,
    pupil_center: Path | None,
    out: Path,
    std_out: Path | None,
    data_key: str | None,
    model: str | None,
    batch: int,
    restart: bool,
    quiet: bool,
) -> None:
    """Batch scoring: predicted responses of a twin to many images, written to .npy chunk by chunk.

    SOURCE: an artifact folder, a training run or a server's host:port. A killed run resumes from its last
    chunk when started again with the same arguments; the output appears whole, under its name, at the end.
    """
    import numpy as np

    from twin import open_twin
    from twin.scoring import predict_to_file

    def array(path: Path | None) -> np.ndarray | None:
        return None if path is None else np.load(path, mmap_mode="r", allow_pickle=False)

    twin = open_twin(source, data_key, model)
    path = predict_to_file(
        twin,
        array(images),  # type: ignore[arg-type]
        out,
        behavior=array(behavior),
        pupil_center=array(pupil_center),
        std_out=std_out,
        batch=batch,
        restart=restart,
        progress=not quiet,
    )
    shape = np.load(path, mmap_mode="r").shape
    click.echo(f"wrote responses {shape} to {path}" + (f" and their std to {std_out}" if std_out else ""))


@cli.group()
def submission() -> None:
    """SENSORIUM submission files: write a twin's predictions for a test tier, or score a file."""


@submission.command("write")
@click.argument("source")
@click.option(
    "--data",
    "recording",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="The competition recording (folder or .zip).",
)
@click.option(
    "--tier",
    "tiers",
    type=click.Choice(["test", "final_test"]),
    multiple=True,
    default=("test", "final_test"),
    show_default=True,
)
@click.option("--model", default=None, help="Model name on a server that has several.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Folder.")
def submission_write(
    source: str, recording: Path, tiers: tuple[str, ...], model: str | None, out: Path
) -> None:
    """Predict every trial of the tiers and write submission_file_live_test.csv (test tier) and
    submission_file_final_test.csv, as the benchmark expects them."""
    from twin import open_twin
    from twin.data import load_recording
    from twin.scoring import SUBMISSION_FILES, tier_submission, write_submission

    data_key = load_recording(recording, progress=False).data_key
    twin = open_twin(source, data_key, model)
    for tier in dict.fromkeys(tiers):
        path = write_submission(tier_submission(twin, recording, tier), out / SUBMISSION_FILES[tier])
        click.echo(f"{tier}: wrote {path}")


@submission.command("score")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--data",
    "recording",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="The recording, its held-out responses beside it in held_out/<data key>.",
)
@click.option(
    "--tier", type=click.Choice(["validation", "test", "final_test"]), default="test", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def submission_score(file: Path, recording: Path, tier: str, as_json: bool) -> None:
    """Score a submission file against the recording's true responses: the benchmark's three metrics."""
    from twin.scoring import read_submission, score_submission

    result = score_submission(read_submission(file), recording, tier)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(_score_table({result["data_key"]: result}, tier))


@cli.command()
@click.argument("address")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True)
def reload(address: str, timeout: float) -> None:
    """Make the server at ADDRESS (host:port) re-scan its repository now; print what changed.

    New version folders load, removed ones unload (their running requests finish). Exit 1 when a version
    failed to load (the serving version stays in place) or the server cannot be reached.
    """
    from twin.client import TwinClient
    from twin.errors import TwinError

    try:
        with TwinClient(address, timeout=timeout) as client:
            report = client.reload()
    except TwinError as exc:
        raise click.ClickException(f"reload: {exc}") from None
    for outcome in ("loaded", "unloaded"):
        for model, version in report[outcome]:
            click.echo(f"{outcome} {model} version {version}")
    for model, version, error in report["failed"]:
        click.echo(f"failed {model} version {version}: {error}")
    if not any(report.values()):
        click.echo("no change")
    if report["failed"]:
        sys.exit(1)


@cli.command()
@click.argument("address")
@click.option("--service", default="", help="A service name; the whole server by default.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True)
def health(address: str, service: str, timeout: float) -> None:
    """Exit 0 when the gRPC server at ADDRESS (host:port) reports SERVING, else print its status, exit 1."""
    from serving.health import probe

    status = probe(address, service, timeout)
    click.echo(status)
    if status != "SERVING":
        sys.exit(1)


@cli.command()
@click.option(
    "--repository",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Model repository: DIR/<model>/<version>/ artifact folders (as `twin export` writes them).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option(
    "--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0: a free one."
)
@click.option(
    "--http-port", type=click.IntRange(0, 65535), default=None, help="Also serve HTTP (BentoML) here."
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, help="Prometheus /metrics here.")
@click.option(
    "--heldout",
    type=click.Path(path_type=Path, exists=True),
    multiple=True,
    help="Recording(s) with held-out responses for Evaluate (repeatable).",
)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--max-queue-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between repository re-scans; 0: only on the Reload RPC.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
def serve(
    repository: Path,
    host: str,
    grpc_port: int,
    http_port: int | None,
    metrics_port: int | None,
    heldout: tuple[Path, ...],
    max_batch_size: int,
    max_queue_delay_ms: float,
    max_queue_size: int,
    poll_interval: float,
    threads: int | None,
) -> None:
    """Serve a model repository over gRPC (twin.v1 and KServe v2) until SIGINT or SIGTERM.

    \b
    Health checks (grpc.health.v1), reflection, hot reload of new versions, Prometheus metrics;
    with --http-port, the same over HTTP (BentoML) with the same batching and polling settings.
      twin serve --repository models/ --grpc-port 8001 --metrics-port 8002
    """
    import os
    import signal
    import subprocess
    import threading

    from serving.server import start

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    http: subprocess.Popen[bytes] | None = None
    http_failed = False
    try:
        running = start(
            repository,
            host=host,
            port=grpc_port,
            heldout=list(heldout),
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue_size=max_queue_size,
            poll_interval_s=poll_interval or None,
            metrics_port=metrics_port,
            threads=threads,
        )
        try:
            for status in running.repository.models():
                versions = ", ".join(f"{v.version} {v.state}" for v in status.versions)
                click.echo(
                    f"model {status.name}: serving version {status.serving_version} ({versions})", err=True
                )
            metrics = "" if running.metrics_port is None else f", metrics on port {running.metrics_port}"
            click.echo(f"serving gRPC on {running.address}{metrics}", err=True)
            if http_port is not None:
                from serving.bento_service import http_command

                argv, env = http_command(
                    repository,
                    port=http_port,
                    host=host,
                    heldout=list(heldout),
                    poll_interval_s=poll_interval or None,
                    max_batch_size=max_batch_size,
                    max_queue_delay_ms=max_queue_delay_ms,
                    max_queue_size=max_queue_size,
                    threads=threads,
                )
                http = subprocess.Popen(argv, env={**os.environ, **env})
                click.echo(f"serving HTTP on {host}:{http_port} (pid {http.pid})", err=True)
            while not stop.wait(0.5):
                if http is not None and http.poll() is not None:
                    click.echo(f"error: the HTTP server exited with status {http.returncode}", err=True)
                    http_failed = True
                    break
        finally:
            click.echo("shutting down", err=True)
            if http is not None and http.poll() is None:
                http.terminate()
                try:
                    http.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    http.kill()
                    http.wait()
            running.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if http_failed:
        sys.exit(1)


cli.add_command(experiment)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="twin", standalone_mode=True)


if __name__ == "__main__":
    main()
