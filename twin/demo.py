"""The whole twin on a simulated mouse, end to end: `python -m twin.demo --out DIR` (what `make demo` runs).

simulate a mouse -> train a small ensemble -> export it as an artifact -> serve it over gRPC -> a client
predicts, asks the server to score the model on its held-out test tier, finds the most exciting image
of the best-predicted neuron with the served gradient and maps every neuron's receptive field, and checks
both against the simulated mouse's ground truth -> the server is shut down. Each step runs the `twin`
command a user would type and prints it. Exit status 0 when every step succeeded, 1 otherwise; the
server is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from twin.atomic import write_json

__all__ = ["format_scores", "main", "query", "run", "serve", "serve_and_query", "train_small_ensemble"]

Print = Callable[[str], None]


def _say(message: str) -> None:
    print(message, flush=True)


def _twin(args: Sequence[str | int | os.PathLike[str]], say: Print) -> None:
    """Run one `twin` command (in this interpreter's environment), showing it first."""
    words = [str(a) for a in args]
    say("  $ twin " + " ".join(words))
    subprocess.run([sys.executable, "-m", "twin.cli", *words], check=True)


def train_small_ensemble(sim: Path, runs: Path, members: int, epochs: int, say: Print = _say) -> Path:
    """Train a narrowed SENSORIUM CNN baseline (16 channels, 3 layers): seconds per epoch on a laptop CPU."""
    from training.models import get_config  # torch: only this step needs it

    base = get_config("cnn")
    model = replace(base, name="cnn-small", core=replace(base.core, channels=16, layers=3, hidden_kernel=5))
    config = write_json(runs / "cnn-small.json", model.to_dict())
    run = runs / "cnn-small"
    args: list[str | int | os.PathLike[str]] = [
        "--data",
        sim,
        "--model",
        config,
        "--members",
        members,
        "--epochs",
        epochs,
        "--out",
        run,
    ]
    _twin(["train", *args, "--quiet"], say)
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(
    repository: Path,
    heldout: Path,
    *,
    port: int | None = None,
    log: Path | None = None,
    ready_timeout_s: float = 120.0,
    say: Print = _say,
) -> Iterator[str]:
    """`twin serve` in the background; yields its address once a model is ready, then stops it (SIGTERM)."""
    from twin.client import TwinClient
    from twin.errors import ModelNotReady

    port = port or _free_port()
    address = f"127.0.0.1:{port}"
    args = ["serve", "--repository", str(repository), "--grpc-port", str(port), "--heldout", str(heldout)]
    log = log or repository.parent / "serve.log"
    say(f"  $ twin {' '.join(args)} &   (log: {log})")
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "twin.cli", *args], stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        begin = time.monotonic()
        with TwinClient(address, retries=0, timeout=2.0) as probe:
            while True:
                if server.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"twin serve exited with status {server.returncode}:\n{tail}")
                with contextlib.suppress(ModelNotReady):
                    if any(m["serving_version"] for m in probe.models()):
                        break
                if time.monotonic() - begin > ready_timeout_s:
                    raise RuntimeError(f"twin serve at {address}: no model ready after {ready_timeout_s:g} s")
                time.sleep(0.2)
        say(f"  server ready at {address} after {time.monotonic() - begin:.1f} s")
        yield address
    finally:
        if server.poll() is None:
            say("  stopping the server (SIGTERM)")
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say("  the server did not stop within 30 s; killing it")
                server.kill()
                server.wait()
        say(f"  server exited with status {server.returncode}")


def _test_images(heldout: Path, data_key: str, count: int) -> np.ndarray:
    """The first `count` test-tier images of a recording, (count, 1, H, W) raw pixels."""
    from twin.data import load_recording

    folder = next(p for p in sorted(heldout.glob("static*")) if p.name.startswith(f"static{data_key}"))
    recording = load_recording(folder, progress=False)
    return np.asarray(recording.images[recording.tier_indices("test")[:count]])


def query(address: str, heldout: Path, *, mei_steps: int = 50, say: Print = _say) -> list[dict[str, Any]]:
    """What a client does, per data key: predict, the held-out scores, the most exciting image of the best
    neuron and every neuron's receptive field, both through the served model and checked against the
    simulated mouse's ground truth (when `heldout` is a simulation folder)."""
    from twin.client import TwinClient
    from twin.experiments import GroundTruthTwin, most_exciting_images, receptive_fields

    with TwinClient(address) as client:
        (model,) = client.models()
    scores = []
    for data_key in model["data_keys"]:
        with TwinClient(address, model["name"], data_key) as twin:
            say(
                f"  {model['name']} v{twin.version}, recording {data_key}: {twin.n_neurons} neurons, "
                f"{twin.n_members} members"
            )
            images = _test_images(heldout, data_key, 8)
            mean, std = twin.predict(images)
            say(
                f"    predict {images.shape[0]} test images: mean response {mean.mean():.3f}, "
                f"ensemble std {std.mean():.3f}"
            )
            result = twin.evaluate("test", per_neuron=True)
            per_neuron = result.pop("per_neuron")
            best = int(np.nanargmax(per_neuron["single_trial_correlation"]))
            neuron = int(per_neuron["neuron_ids"][best])
            ground = GroundTruthTwin(heldout, data_key) if (heldout / "ground_truth").is_dir() else None
            meis = most_exciting_images(twin, [neuron], steps=mei_steps)
            natural = float(twin.predict(images, neurons=[neuron])[0].max())
            say(
                f"    best-predicted neuron {neuron} (test correlation "
                f"{per_neuron['single_trial_correlation'][best]:.3f}): its most exciting image "
                f"({mei_steps} gradient steps) drives it to {meis.activation[0]:.3f} "
                f"(best of the {len(images)} test images: {natural:.3f})"
            )
            if ground is not None:
                natural_images = ground.natural_images()
                checked = ground.score_meis(meis, natural_images)
                ratio, alignment = checked["ratio_median"], checked["filter_alignment_median"]
                say(
                    f"      the simulated neuron itself responds to that image {ratio:.2f}x "
                    f"as much as to the best of the recording's {len(natural_images)} images; "
                    f"{alignment:.0%} of the image is its true receptive field "
                    "(its Gabor pair)"
                )
            fields = receptive_fields(twin)
            if ground is not None:
                mapped = ground.score_receptive_fields(fields)
                say(
                    f"    receptive fields of all {twin.n_neurons} neurons mapped with sparse noise: centres "
                    f"{mapped['center_error_px_median']:.2f} px from the true ones (median; "
                    f"{mapped['within_2px_fraction']:.0%} within 2 px)"
                )
            scores.append(result)
    return scores


def format_scores(scores: list[dict[str, Any]]) -> str:
    """The held-out scores as a small table."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"  {'data key':<10} {'tier':<5} {'trials':>6} {'neurons':>7} {'single-trial':>12} "
        f"{'to average':>10} {'FEVE':>6} {'FEV>=.15':>8} {'oracle':>6}"
    ]
    for s in scores:
        lines.append(
            f"  {s['data_key']:<10} {s['tier']:<5} {s['n_trials']:>6} {s['n_neurons']:>7} "
            f"{number(s['single_trial_correlation']):>12} {number(s['correlation_to_average']):>10} "
            f"{number(s['feve']):>6} {number(s['fev_fraction_above_threshold']):>8} "
            f"{number(s['oracle_correlation']):>6}"
        )
    return "\n".join(lines)


def serve_and_query(repository: Path, heldout: Path, *, port: int | None = None, say: Print = _say) -> list:
    """Serve a repository, query it as a client and print the test-tier scores; the server is stopped."""
    with serve(repository, heldout, port=port, say=say) as address:
        scores = query(address, heldout, say=say)
    say("  held-out test tier, scored by the server:\n" + format_scores(scores))
    return scores


def run(out: Path, *, members: int = 2, epochs: int = 40, seed: int = 0, say: Print = _say) -> list:
    """Every step, in order, under `out`."""
    sim, runs, models = out / "sim", out / "runs", out / "models"
    steps = 5
    begin = time.monotonic()

    say(f"[1/{steps}] simulate a mouse (2 recordings x 150 neurons, held-out test responses kept aside)")
    _twin(["simulate", "--preset", "tiny", "--out", sim, "--seed", seed, "--force", "--quiet"], say)
    say(f"[2/{steps}] train an ensemble of {members} small CNNs ({epochs} epochs at most each)")
    run_dir = train_small_ensemble(sim, runs, members, epochs, say)
    say(f"[3/{steps}] export it as an artifact: ONNX graphs + a checksummed manifest")
    _twin(["export", run_dir, "--out", models / "cnn-small" / "1", "--force", "--quiet"], say)
    say(f"[4/{steps}] serve it over gRPC, then predict, optimize and evaluate as a client")
    scores = serve_and_query(models, sim, say=say)
    say(f"[5/{steps}] done in {time.monotonic() - begin:.0f} s; everything is under {out}")
    return scores


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; expected an integer >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twin.demo", description="The whole twin on a simulated mouse."
    )
    parser.add_argument("--out", type=Path, required=True, help="Folder for everything the demo writes.")
    parser.add_argument("--members", type=_positive, default=2, help="Ensemble size (default 2).")
    parser.add_argument("--epochs", type=_positive, default=40, help="At most this many epochs (default 40).")
    parser.add_argument("--seed", type=int, default=0, help="Simulation seed (default 0).")
    args = parser.parse_args(argv)
    try:
        run(args.out, members=args.members, epochs=args.epochs, seed=args.seed)
    except subprocess.CalledProcessError as exc:
        print(
            f"demo failed: `twin {' '.join(map(str, exc.cmd[3:]))}` exited with {exc.returncode}",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
