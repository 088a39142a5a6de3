"""Benchmark: serving the twin — ONNX Runtime against torch, gRPC against in-process calls, batching.

Everything is measured in one run, each figure against its baseline in the same run:

1. engines: the exported ensemble on ONNX Runtime (twin.artifact: OnnxTwin.predict) against torch eager
   of the same ensemble — the run's selected members rebuilt by training.run.load_members and wrapped in
   the exporter's ResponseGraph, so preprocessing, weights and the ensemble mean/std are the same; eval
   mode, torch.inference_mode, the same thread count. torch runs in channels_last (the trainer's layout)
   and in NCHW; the target compares ONNX Runtime with the faster of the two. Batch 1, 32 and 128. Where
   ONNX Runtime runs a batch in calls of at most `rows_per_run` images (on CPU, twin.artifact), the same
   batch in one call is measured beside it ("ort_one_call").
2. grpc: Predict end to end — a real server (serving.server.start in a child process, loopback, its
   default dynamic batching) called through the generated twin.v1 stubs, each client thread with its own
   channel — against OnnxTwin.predict in this process (all threads share one OnnxTwin), at batch 1 and 32
   with 1, 8 and 32 concurrent clients. Closed loop: a client sends its next request when the previous one
   has been answered (and decoded into numpy). Throughput (images/s) and p50/p99 latency per request.
3. batching: 32 concurrent batch-1 clients against two servers, dynamic batching on (max_batch_size 32,
   max_queue_delay_ms 2) and off (max_queue_delay_ms 0); the servers' own metrics give the mean number of
   images per model call.
4. gradient: the Gradient RPC against in-process torch autograd of the same ensemble (channels_last,
   parameters frozen), with in-process ONNX Runtime (OnnxTwin.gradient) for reference; batch 1 and 32.
   Where the gradient graph runs a batch in calls of fewer images, one call is measured beside it.
   channels_last also keeps torch correct at batch 1: in NCHW, torch 2.13's CPU BatchNorm backward in
   eval mode is wrong there (see tests/training/test_export.py). Agreement with gRPC is recorded.

Measurements of the compared sides are interleaved (one call or one load run of each per round, the
order alternating, with a short pause between sides so that one side's spinning worker threads do not
slow the next) so that load from other processes falls on all alike; figures are medians over rounds.
A load run of 1,024 images or more (32 clients x batch 32) is done once.

The model: by default a run trained here for the purpose — `--members` members of `--model` (default
`cnn`, the SENSORIUM baseline at its real widths) for one epoch on a simulated recording in the `tiny`
preset's format (36x64 images) with `--neurons` neurons (default 8,000, a SENSORIUM recording's size).
Accuracy is irrelevant here; every trained member is served (the bench overrides greedy selection). Or
`--run RUN_DIR`: an existing run, its selected members, exported here with training.export.export_run.

Usage: python bench/serving.py [--quick] [--run RUN_DIR] [--threads N] [--out FILE]
       [--model cnn] [--members 3] [--neurons 8000] [--repeats 2]
--quick: a narrow 2-member model, 100 neurons and few requests, a pipeline check in tens of seconds.
Prints a table with the targets and writes bench/results/serving-<N>cpu.json
(serving-quick-<N>cpu.json with --quick), or --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/ and the packages beside it
    sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results"
DATA_KEY = "90001-1-1"
ENGINE_BATCHES = (1, 32, 128)
GRPC_BATCHES = (1, 32)
CLIENTS = (1, 8, 32)
GRADIENT_BATCHES = (1, 32)
BATCHING_CLIENTS = 32
MAX_MESSAGE = 64 * 2**20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
SETTLE_S = 0.05  # pause between timed calls of different sides (see `settle`)
ONE_RUN_IMAGES = 1024  # a load run of at least this many images is not repeated
TARGETS = {
    "ort_vs_torch_batch128": 2.0,
    "grpc_vs_in_process_batch32": 0.8,
    "batching_on_vs_off": 3.0,
}


@dataclass(frozen=True)
class Sizes:
    """How much work each part does: calls per engine and batch, images per load run, rounds."""

    engine_calls: dict[int, int]
    grpc_images: dict[int, int]  # images per load run (at least one request per client)
    batching_requests_per_client: int
    gradient_calls: dict[int, int]
    repeats: int  # rounds of the load runs (parts 2 and 3)


FULL = Sizes(
    engine_calls={1: 30, 32: 4, 128: 2},
    grpc_images={1: 128, 32: 256},
    batching_requests_per_client=8,
    gradient_calls={1: 10, 32: 3},
    repeats=2,
)
QUICK = Sizes(
    engine_calls={1: 3, 32: 2, 128: 1},
    grpc_images={1: 16, 32: 32},
    batching_requests_per_client=2,
    gradient_calls={1: 2, 32: 2},
    repeats=1,
)


# ---------------------------------------------------------------------------------------------------
# The model: a run trained here (or given) and exported into a model repository


def simulate_recording(neurons: int, out: Path, quick: bool) -> Path:
    """One simulated recording in the tiny preset's format (36x64 images) with `neurons` neurons."""
    from twin.data import simulate
    from twin.data.presets import Preset, RecordingSpec

    train, validation = (96, 32) if quick else (192, 64)
    spec = RecordingSpec(DATA_KEY, "pretrain", neurons, n_train=train, n_validation=validation)
    preset = Preset(
        "serving-bench",
        (36, 64),
        (spec,),
        n_test_images=4 if quick else 8,
        repeats=2,
        description=f"1 recording x {neurons} neurons, 36x64 images (bench/serving.py)",
    )
    simulate(preset, out, seed=0, overwrite=True, progress=False)
    return out


def model_config(name: str, quick: bool):
    """The registered model; with --quick narrowed to 8 channels and 2 layers (a pipeline check)."""
    from training.models import get_config

    config = get_config(name)
    if quick:
        core = replace(config.core, channels=8, layers=2, hidden_kernel=5)
        config = replace(config, name=f"{name}-quick", core=core)
    return config


def train_bench_run(args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """A run of `args.members` members trained for `args.epochs` epochs; every member kept."""
    from training.run import train_run
    from training.trainer import TrainConfig
    from twin.atomic import write_json

    start = time.perf_counter()
    data = simulate_recording(args.neurons, work / "sim", args.quick)
    simulated = time.perf_counter() - start
    config = TrainConfig(max_epochs=args.epochs, batch_size=64, patience=1, lr_decay_steps=1, seed=args.seed)
    run = work / "run"
    start = time.perf_counter()
    train_run(
        sorted(data.glob("static*")),
        model_config(args.model, args.quick),
        run,
        members=args.members,
        config=config,
        progress=False,
    )
    trained = time.perf_counter() - start
    selection = run / "selection.json"
    greedy = json.loads(selection.read_text())["selected"] if selection.is_file() else None
    # The bench measures an ensemble of --members: serve every member, whatever greedy selection kept.
    write_json(selection, {"selected": list(range(args.members))})
    info = {
        "source": "trained by the bench",
        "greedy_selection": greedy,
        "served_members": list(range(args.members)),
        "simulate_seconds": round(simulated, 1),
        "train_seconds": round(trained, 1),
    }
    return run, info


@dataclass
class Model:
    run: Path
    repository: Path  # ROOT/<name>/1/
    artifact: Path
    name: str
    data_key: str
    info: dict


def prepare_model(args: argparse.Namespace, work: Path) -> Model:
    from training.export import export_run

    if args.run is not None:
        run, info = Path(args.run), {"source": str(args.run)}
    else:
        run, info = train_bench_run(args, work)
    description = json.loads((run / "run.json").read_text())
    name = description["model"]["name"]
    keys = list(description["preprocessing"])
    data_key = args.data_key or keys[0]
    if data_key not in keys:
        raise SystemExit(f"--data-key: {data_key!r} is not a recording of {run}; expected one of {keys}")
    repository = work / "models"
    start = time.perf_counter()
    artifact = export_run(run, repository / name / "1")
    info["export_seconds"] = round(time.perf_counter() - start, 1)
    info["artifact_bytes"] = sum(p.stat().st_size for p in artifact.iterdir())
    return Model(run, repository, artifact, name, data_key, info)


# ---------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Inputs:
    """One request's arrays: raw uint8 images (B, H, W), and behaviour / pupil centre when required."""

    images: np.ndarray
    behavior: np.ndarray | None
    pupil_center: np.ndarray | None
    weights: np.ndarray  # (B, N) float32, for gradients

    @property
    def batch(self) -> int:
        return int(self.images.shape[0])


def make_inputs(twin: Any, batch: int, seed: int) -> Inputs:
    rng = np.random.default_rng([seed, batch])
    height, width = twin.image_size
    behavior = rng.uniform(0, 1, (batch, 3)).astype(np.float32) if twin.requires["behavior"] else None
    pupil = rng.normal(0, 1, (batch, 2)).astype(np.float32) if twin.requires["pupil_center"] else None
    return Inputs(
        images=rng.integers(0, 256, (batch, height, width), dtype=np.uint8),
        behavior=behavior,
        pupil_center=pupil,
        weights=rng.standard_normal((batch, twin.n_neurons)).astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------------
# torch eager of the same ensemble


class TorchEnsemble:
    """The run's selected members in the exporter's ResponseGraph (same preprocessing and mean/std)."""

    def __init__(self, run: Path, data_key: str, *, channels_last: bool, device: str = "cpu"):
        import torch

        from training.data import Preprocessing
        from training.export import ResponseGraph
        from training.run import load_members

        description, nets = load_members(run, device, selected_only=True)
        pre = Preprocessing.from_dict(description["preprocessing"][data_key])
        graph = ResponseGraph(nets, data_key, pre).to(device).eval().requires_grad_(False)
        if channels_last:
            graph = graph.to(memory_format=torch.channels_last)
        self.graph = graph
        self.device = device
        self.members = len(nets)

    def _tensors(self, inputs: Inputs, requires_grad: bool = False):
        import torch

        images = torch.from_numpy(inputs.images).to(self.device, torch.float32)
        images.requires_grad_(requires_grad)
        extra = {
            name: torch.from_numpy(value).to(self.device)
            for name, value in (("behavior", inputs.behavior), ("pupil_center", inputs.pupil_center))
            if value is not None
        }
        return images, extra

    def _sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            images, extra = self._tensors(inputs)
            mean, std, _ = self.graph(images, **extra)
            out = mean.cpu().numpy(), std.cpu().numpy()
        self._sync()
        return out

    def gradient(self, inputs: Inputs) -> np.ndarray:
        """d sum(weights * mean) / d images by autograd, (B, H, W)."""
        import torch

        images, extra = self._tensors(inputs, requires_grad=True)
        weights = torch.from_numpy(inputs.weights).to(self.device)
        mean = self.graph.members(images, extra.get("behavior"), extra.get("pupil_center")).mean(0)
        (gradient,) = torch.autograd.grad((mean * weights).sum(), images)
        out = gradient.cpu().numpy()
        self._sync()
        return out


def relative_difference(a: np.ndarray, reference: np.ndarray) -> float:
    """max |a - reference| / max |reference|."""
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(np.asarray(a, np.float64) - reference).max() / scale)


# ---------------------------------------------------------------------------------------------------
# The gRPC server, in a child process


_SERVER_SCRIPT = """
import json, sys
from serving.server import start
config = json.loads(sys.argv[1])
with start(config.pop("repository"), **config) as server:
    print(json.dumps({"address": server.address, "metrics_port": server.metrics_port}), flush=True)
    sys.stdin.read()  # serve until the bench closes stdin (or exits)
"""


class ServerProcess:
    """serving.server.start(...) in a child process on loopback; stopped when stdin closes."""

    def __init__(self, repository: Path, **options: Any):
        config = {
            "repository": str(repository),
            "port": 0,
            "metrics_port": 0,
            "poll_interval_s": None,  # no re-scans while timing
            "max_message_mb": MAX_MESSAGE // 2**20,
            **options,
        }
        self.options = options
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_SCRIPT, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(timeout=30)
            raise RuntimeError(f"gRPC server exited with status {code} before serving ({options})")
        started = json.loads(line)
        self.address: str = started["address"]
        self.metrics_port: int = started["metrics_port"]

    def batch_counters(self) -> dict[str, float]:
        """The server's running totals of model calls, images and requests in them."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("twin_batch_rows_count", "twin_batch_rows_sum", "twin_batch_requests_sum"):
                values[name] = float(value)
        return values

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------------------------------------
# gRPC clients (the generated stubs, nothing else)


def channel(address: str):
    import grpc

    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def _tensor(array: np.ndarray):
    from serving.tensors import to_tensor

    return to_tensor(array)


def predict_request(model: Model, inputs: Inputs):
    from twin._proto.twin.v1 import twin_pb2

    request = twin_pb2.PredictRequest(
        model=model.name, data_key=model.data_key, images=_tensor(inputs.images)
    )
    if inputs.behavior is not None:
        request.behavior.CopyFrom(_tensor(inputs.behavior))
    if inputs.pupil_center is not None:
        request.pupil_center.CopyFrom(_tensor(inputs.pupil_center))
    return request


def gradient_request(model: Model, inputs: Inputs):
    from twin._proto.twin.v1 import twin_pb2

    request = twin_pb2.GradientRequest(
        model=model.name,
        data_key=model.data_key,
        images=_tensor(inputs.images),
        weights=_tensor(inputs.weights),
    )
    if inputs.behavior is not None:
        request.behavior.CopyFrom(_tensor(inputs.behavior))
    if inputs.pupil_center is not None:
        request.pupil_center.CopyFrom(_tensor(inputs.pupil_center))
    return request


def decode(tensor) -> np.ndarray:
    """A float32 twin.v1 Tensor as a numpy array (what a client does with each answer)."""
    return np.frombuffer(tensor.data, "<f4").reshape(tuple(tensor.shape))


# A client factory: open(i) -> (call, close) for client thread i.
Client = Callable[[int], tuple[Callable[[], Any], Callable[[], None]]]


def grpc_predict_clients(address: str, model: Model, inputs: Inputs) -> Client:
    """Each client thread its own channel and stub; connected (ListModels) before timing starts."""
    from twin._proto.twin.v1 import twin_pb2, twin_pb2_grpc

    request = predict_request(model, inputs)

    def open_client(_: int):
        ch = channel(address)
        stub = twin_pb2_grpc.TwinStub(ch)
        stub.ListModels(twin_pb2.ListModelsRequest(), timeout=60)

        def call() -> tuple[np.ndarray, np.ndarray]:
            response = stub.Predict(request, timeout=600)
            return decode(response.mean), decode(response.std)

        return call, ch.close

    return open_client


def in_process_clients(twin: Any, inputs: Inputs) -> Client:
    """Every client thread calls the same OnnxTwin."""

    def open_client(_: int):
        def call() -> tuple[np.ndarray, np.ndarray]:
            return twin.predict(inputs.images, inputs.behavior, inputs.pupil_center)

        return call, lambda: None

    return open_client


def closed_loop(open_client: Client, clients: int, requests_per_client: int, batch: int) -> dict:
    """`clients` threads, each sending `requests_per_client` requests back to back; timed together."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    finished = [0.0] * clients
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        close: Callable[[], None] = lambda: None  # noqa: E731
        try:
            call, close = open_client(i)
            barrier.wait()
            for _ in range(requests_per_client):
                start = time.perf_counter()
                call()
                latencies[i].append(time.perf_counter() - start)
            finished[i] = time.perf_counter()
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    seconds = max(finished) - start
    flat = [x for per_client in latencies for x in per_client]
    return {
        "seconds": seconds,
        "images": clients * requests_per_client * batch,
        "images_per_second": clients * requests_per_client * batch / seconds,
        "latencies": flat,
    }


def summarize_runs(runs: list[dict], batch: int, clients: int, requests_per_client: int) -> dict:
    """Median throughput over the runs; latency percentiles over all their requests."""
    latencies = np.concatenate([r["latencies"] for r in runs]) * 1000
    rates = [r["images_per_second"] for r in runs]
    return {
        "batch": batch,
        "clients": clients,
        "requests_per_client": requests_per_client,
        "runs": len(runs),
        "images_per_second": round(float(np.median(rates)), 2),
        "images_per_second_runs": [round(x, 2) for x in rates],
        "requests": int(latencies.size),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 2),
        "latency_ms_mean": round(float(latencies.mean()), 2),
        "latency_ms_max": round(float(latencies.max()), 2),
    }


# ---------------------------------------------------------------------------------------------------
# The four parts


def settle() -> None:
    """Let the previous side's worker threads go idle before the next side is timed.

    ONNX Runtime's intra-op threads and torch's OpenMP threads spin for a while after each call; on a
    machine with as many threads as cores, the next call (of the other engine) would pay for that.
    """
    time.sleep(SETTLE_S)


def timed_calls(runners: dict[str, Callable[[], Any]], calls: int, warmup: int = 1) -> dict[str, list[float]]:
    """One call of every runner per round, the order alternating; warm-up rounds are dropped."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(warmup + calls):
        for name in names if r % 2 == 0 else names[::-1]:
            settle()
            start = time.perf_counter()
            runners[name]()
            if r >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def call_summary(seconds: list[float], batch: int) -> dict:
    median = float(np.median(seconds))
    return {
        "calls": len(seconds),
        "seconds_median": round(median, 5),
        "seconds_min": round(min(seconds), 5),
        "images_per_second": round(batch / median, 2),  # a median call
        "images_per_second_mean": round(batch * len(seconds) / sum(seconds), 2),
        "call_seconds": [round(s, 5) for s in seconds],
    }


def part_engines(
    ort_twin: Any, torch_models: dict[str, TorchEnsemble], sizes: Sizes, seed: int, one_call: Any = None
) -> dict:
    """`one_call`: the same artifact loaded to run every batch in one ONNX Runtime call ("ort_one_call",
    against which the default rows per call is compared), where that differs from the default."""
    out: dict[str, Any] = {}
    for batch in ENGINE_BATCHES:
        inputs = make_inputs(ort_twin, batch, seed)
        runners: dict[str, Callable[[], Any]] = {
            "ort": lambda i=inputs: ort_twin.predict(i.images, i.behavior, i.pupil_center)
        }
        if one_call is not None and batch > ort_twin.rows_per_run:
            runners["ort_one_call"] = lambda i=inputs: one_call.predict(i.images, i.behavior, i.pupil_center)
        for name, model in torch_models.items():
            runners[name] = lambda m=model, i=inputs: m.predict(i)
        print(f"  batch {batch}: {sizes.engine_calls[batch]} calls of {', '.join(runners)}", flush=True)
        seconds = timed_calls(runners, sizes.engine_calls[batch])
        row = {name: call_summary(s, batch) for name, s in seconds.items()}
        torch_names = list(torch_models)
        best = max(torch_names, key=lambda n: row[n]["images_per_second"])
        for name in torch_names:
            row["ort"][f"speedup_vs_{name}"] = round(
                row["ort"]["images_per_second"] / row[name]["images_per_second"], 2
            )
        row["ort"]["speedup_vs_torch_best"] = row["ort"][f"speedup_vs_{best}"]
        if "ort_one_call" in row:
            row["ort"]["speedup_vs_ort_one_call"] = round(
                row["ort"]["images_per_second"] / row["ort_one_call"]["images_per_second"], 2
            )
        row["torch_best"] = best
        mean, _ = ort_twin.predict(inputs.images, inputs.behavior, inputs.pupil_center)
        row["max_relative_difference_vs_torch"] = relative_difference(
            mean, torch_models[torch_names[0]].predict(inputs)[0]
        )
        out[str(batch)] = row
    return out


def requests_per_client(images: int, batch: int, clients: int) -> int:
    return max(1, math.ceil(images / (batch * clients)))


def delta_batches(before: dict[str, float], after: dict[str, float]) -> dict:
    calls = after["twin_batch_rows_count"] - before["twin_batch_rows_count"]
    rows = after["twin_batch_rows_sum"] - before["twin_batch_rows_sum"]
    requests = after["twin_batch_requests_sum"] - before["twin_batch_requests_sum"]
    return {
        "model_calls": int(calls),
        "images_per_model_call": round(rows / calls, 2) if calls else None,
        "requests_per_model_call": round(requests / calls, 2) if calls else None,
    }


def server_run(server: ServerProcess, open_client: Client, clients: int, per_client: int, batch: int) -> dict:
    before = server.batch_counters()
    run = closed_loop(open_client, clients, per_client, batch)
    run["server_batches"] = delta_batches(before, server.batch_counters())
    return run


def part_grpc(server: ServerProcess, model: Model, ort_twin: Any, sizes: Sizes, seed: int) -> list[dict]:
    rows = []
    for batch in GRPC_BATCHES:
        inputs = make_inputs(ort_twin, batch, seed)
        for clients in CLIENTS:
            per_client = requests_per_client(sizes.grpc_images[batch], batch, clients)
            sides = {
                "grpc": lambda c=clients, n=per_client, b=batch, i=inputs: server_run(
                    server, grpc_predict_clients(server.address, model, i), c, n, b
                ),
                "in_process": lambda c=clients, n=per_client, b=batch, i=inputs: closed_loop(
                    in_process_clients(ort_twin, i), c, n, b
                ),
            }
            runs: dict[str, list[dict]] = {name: [] for name in sides}
            rounds = 1 if clients * per_client * batch >= ONE_RUN_IMAGES else sizes.repeats
            for r in range(rounds):
                for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                    settle()
                    runs[name].append(sides[name]())
            row = {name: summarize_runs(runs[name], batch, clients, per_client) for name in sides}
            row["grpc"]["server_batches"] = [r["server_batches"] for r in runs["grpc"]]
            row["batch"], row["clients"] = batch, clients
            row["grpc_vs_in_process"] = round(
                row["grpc"]["images_per_second"] / row["in_process"]["images_per_second"], 2
            )
            print(
                f"  batch {batch:3d} x {clients:2d} clients: gRPC {row['grpc']['images_per_second']:8.1f} "
                f"img/s, in process {row['in_process']['images_per_second']:8.1f} img/s "
                f"({row['grpc_vs_in_process']:.2f}x)",
                flush=True,
            )
            rows.append(row)
    return rows


def part_batching(
    servers: dict[str, ServerProcess], model: Model, ort_twin: Any, sizes: Sizes, seed: int
) -> dict:
    inputs = make_inputs(ort_twin, 1, seed)
    clients, per_client = BATCHING_CLIENTS, sizes.batching_requests_per_client
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for r in range(sizes.repeats):
        for name in list(servers) if r % 2 == 0 else list(servers)[::-1]:
            settle()
            server = servers[name]
            runs[name].append(
                server_run(
                    server, grpc_predict_clients(server.address, model, inputs), clients, per_client, 1
                )
            )
    out: dict[str, Any] = {}
    for name, server in servers.items():
        out[name] = summarize_runs(runs[name], 1, clients, per_client)
        out[name]["server_options"] = server.options
        out[name]["server_batches"] = [r["server_batches"] for r in runs[name]]
    out["on_vs_off"] = round(out["on"]["images_per_second"] / out["off"]["images_per_second"], 2)
    return out


def batching_ceiling(engines: dict) -> dict:
    """What batching can gain in model time alone: ORT images/s at batch 32 over batch 1 (part 1)."""
    one, many = engines["1"]["ort"]["images_per_second"], engines["32"]["ort"]["images_per_second"]
    return {
        "ort_images_per_second_batch1": one,
        "ort_images_per_second_batch32": many,
        "batch32_vs_batch1": round(many / one, 2),
    }


def part_gradient(
    server: ServerProcess,
    model: Model,
    ort_twin: Any,
    torch_model: TorchEnsemble,
    sizes: Sizes,
    seed: int,
    one_call: Any = None,
) -> dict:
    """`one_call` as in part_engines: in-process ONNX Runtime with the batch in one call ("ort_one_call")
    beside the default, where a batch is larger than the default gradient_rows_per_run."""
    from twin._proto.twin.v1 import twin_pb2_grpc

    ch = channel(server.address)
    stub = twin_pb2_grpc.TwinStub(ch)
    out: dict[str, Any] = {}
    try:
        for batch in GRADIENT_BATCHES:
            inputs = make_inputs(ort_twin, batch, seed)
            request = gradient_request(model, inputs)
            runners: dict[str, Callable[[], Any]] = {
                "grpc": lambda r=request: decode(stub.Gradient(r, timeout=600).gradient),
                "torch": lambda i=inputs: torch_model.gradient(i),
                "ort_in_process": lambda i=inputs: ort_twin.gradient(
                    i.images, i.weights, i.behavior, i.pupil_center
                ),
            }
            if one_call is not None and batch > ort_twin.gradient_rows_per_run:
                runners["ort_one_call"] = lambda i=inputs: one_call.gradient(
                    i.images, i.weights, i.behavior, i.pupil_center
                )
            print(f"  batch {batch}: {sizes.gradient_calls[batch]} calls of {', '.join(runners)}", flush=True)
            seconds = timed_calls(runners, sizes.gradient_calls[batch])
            row = {name: call_summary(s, batch) for name, s in seconds.items()}
            for name in ("grpc", "ort_in_process"):
                row[name]["speedup_vs_torch"] = round(
                    row[name]["images_per_second"] / row["torch"]["images_per_second"], 2
                )
            if "ort_one_call" in row:
                row["ort_in_process"]["speedup_vs_ort_one_call"] = round(
                    row["ort_in_process"]["images_per_second"] / row["ort_one_call"]["images_per_second"], 2
                )
            reference = torch_model.gradient(inputs)
            row["max_relative_difference_grpc_vs_torch"] = relative_difference(runners["grpc"](), reference)
            out[str(batch)] = row
    finally:
        ch.close()
    return out


# ---------------------------------------------------------------------------------------------------
# Targets, machine, table


def targets(result: dict) -> list[dict]:
    rows = [
        {
            "name": "ONNX Runtime vs torch eager (faster layout), batch 128",
            "value": result["engines"]["128"]["ort"]["speedup_vs_torch_best"],
            "target": TARGETS["ort_vs_torch_batch128"],
        }
    ]
    for row in result["grpc"]:
        if row["batch"] == 32:
            rows.append(
                {
                    "name": f"gRPC vs in-process throughput, batch 32, {row['clients']} clients",
                    "value": row["grpc_vs_in_process"],
                    "target": TARGETS["grpc_vs_in_process_batch32"],
                }
            )
    rows.append(
        {
            "name": f"dynamic batching on vs off, {BATCHING_CLIENTS} clients x batch 1",
            "value": result["batching"]["on_vs_off"],
            "target": TARGETS["batching_on_vs_off"],
        }
    )
    for row in rows:
        row["met"] = bool(row["value"] >= row["target"])
    return rows


def versions() -> dict:
    from importlib.metadata import version

    import grpc
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "protobuf": version("protobuf"),
        "onnx": version("onnx"),
    }


def print_one_call(part: dict, side: str, rows: int | None) -> None:
    """The lines of a part's batches where ONNX Runtime (`side`) ran in calls of `rows` beside one call."""
    for batch, row in part.items():
        if "ort_one_call" in row:
            print(
                f"  batch {batch}: ONNX Runtime at {rows} per call vs one call: "
                f"{row[side]['images_per_second']:.1f} vs {row['ort_one_call']['images_per_second']:.1f} "
                f"images/s ({row[side]['speedup_vs_ort_one_call']:.2f}x)"
            )


def print_table(result: dict) -> None:
    m, model = result["machine"], result["model"]
    print(
        f"\nserving benchmark: {model['name']} x {model['members']} members, {model['neurons']} neurons, "
        f"{model['image_size'][0]}x{model['image_size'][1]} images; {result['config']['threads']} threads "
        f"({m['cpu']}, {m['cores']} cores); ORT {m['onnxruntime']}, torch {m['torch']}, grpcio {m['grpcio']}"
    )
    load = result["load_average_1min"]
    print(f"load average (1 min): {load['start']} at start, {load['end']} at end (a shared machine)")

    torch_names = result["config"]["torch_layouts"]
    print("\n1. ensemble predictions, images/s (median call): ONNX Runtime vs torch eager")
    header = "".join(f"{'torch ' + n:>20}" for n in torch_names)
    print(f"  {'batch':>5} {'ONNX Runtime':>13}{header} {'ORT / best torch':>17} {'max rel diff':>13}")
    for batch, row in result["engines"].items():
        cells = "".join(f"{row['torch_' + n]['images_per_second']:20.1f}" for n in torch_names)
        print(
            f"  {batch:>5} {row['ort']['images_per_second']:13.1f}{cells} "
            f"{row['ort']['speedup_vs_torch_best']:16.2f}x {row['max_relative_difference_vs_torch']:13.1e}"
        )
    print_one_call(result["engines"], "ort", result["config"].get("ort_rows_per_run"))

    print("\n2. Predict: gRPC (own channel per client, server's default batching) vs in-process ONNX Runtime")
    print(
        f"  {'batch':>5} {'clients':>7} | {'gRPC img/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'img/call':>8} | "
        f"{'in-proc img/s':>13} {'p50 ms':>8} {'p99 ms':>8} | {'gRPC/in-proc':>12}"
    )
    for row in result["grpc"]:
        g, p = row["grpc"], row["in_process"]
        per_call = [b["images_per_model_call"] for b in g["server_batches"] if b["images_per_model_call"]]
        images = f"{np.median(per_call):8.1f}" if per_call else f"{'-':>8}"
        print(
            f"  {row['batch']:5d} {row['clients']:7d} | {g['images_per_second']:10.1f} "
            f"{g['latency_ms_p50']:8.1f} {g['latency_ms_p99']:8.1f} {images} | "
            f"{p['images_per_second']:13.1f} {p['latency_ms_p50']:8.1f} {p['latency_ms_p99']:8.1f} | "
            f"{row['grpc_vs_in_process']:11.2f}x"
        )

    b = result["batching"]
    print(f"\n3. dynamic batching, {BATCHING_CLIENTS} concurrent clients x batch 1 (gRPC)")
    print(f"  {'':9} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'img/model call':>15}")
    for name in ("on", "off"):
        row = b[name]
        per_call = [x["images_per_model_call"] for x in row["server_batches"] if x["images_per_model_call"]]
        print(
            f"  {name:9} {row['images_per_second']:8.1f} {row['latency_ms_p50']:8.1f} "
            f"{row['latency_ms_p99']:8.1f} {np.median(per_call) if per_call else float('nan'):15.1f}"
        )
    print(f"  on / off: {b['on_vs_off']:.2f}x")
    ceiling = b["model_time_ceiling"]
    one, many = ceiling["ort_images_per_second_batch1"], ceiling["ort_images_per_second_batch32"]
    print(
        f"  model time alone (in-process ONNX Runtime, part 1): batch 32 {many:.1f} vs batch 1 {one:.1f} "
        f"img/s = {ceiling['batch32_vs_batch1']:.2f}x"
    )

    print("\n4. input gradient, images/s (median call): gRPC vs in-process torch autograd")
    print(
        f"  {'batch':>5} {'gRPC':>9} {'torch autograd':>15} {'gRPC/torch':>11} {'ORT in-proc':>12} "
        f"{'ORT/torch':>10} {'max rel diff':>13}"
    )
    for batch, row in result["gradient"].items():
        print(
            f"  {batch:>5} {row['grpc']['images_per_second']:9.1f} {row['torch']['images_per_second']:15.1f} "
            f"{row['grpc']['speedup_vs_torch']:10.2f}x {row['ort_in_process']['images_per_second']:12.1f} "
            f"{row['ort_in_process']['speedup_vs_torch']:9.2f}x "
            f"{row['max_relative_difference_grpc_vs_torch']:13.1e}"
        )
    print_one_call(result["gradient"], "ort_in_process", result["config"].get("ort_gradient_rows_per_run"))

    print("\ntargets:")
    for row in result["targets"]:
        verdict = "PASS" if row["met"] else "FAIL"
        print(f"  {row['name']:58} {row['value']:6.2f}x  (>= {row['target']}x)  {verdict}")


# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers_running(repository: Path, threads: int) -> Iterator[dict[str, ServerProcess]]:
    """The default server (batching on) and one with batching off, stopped on the way out."""
    started: dict[str, ServerProcess] = {}
    try:
        started["on"] = ServerProcess(repository, threads=threads, max_batch_size=32, max_queue_delay_ms=2.0)
        started["off"] = ServerProcess(repository, threads=threads, max_batch_size=32, max_queue_delay_ms=0.0)
        yield started
    finally:
        for server in started.values():
            server.stop()


def warm(server: ServerProcess, model: Model, ort_twin: Any) -> None:
    """First calls of a fresh ONNX Runtime session are slow: two of each kind, untimed."""
    from twin._proto.twin.v1 import twin_pb2_grpc

    ch = channel(server.address)
    try:
        stub = twin_pb2_grpc.TwinStub(ch)
        for batch in GRPC_BATCHES:
            inputs = make_inputs(ort_twin, batch, 1)
            for _ in range(2):
                stub.Predict(predict_request(model, inputs), timeout=600)
        stub.Gradient(gradient_request(model, make_inputs(ort_twin, 1, 1)), timeout=600)
    finally:
        ch.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few requests: a pipeline check")
    parser.add_argument("--run", type=Path, default=None, help="an existing training run to export and serve")
    parser.add_argument("--data-key", default=None, help="the recording to serve (default: the run's first)")
    parser.add_argument("--model", default="cnn", help="model trained when no --run is given (default cnn)")
    parser.add_argument("--members", type=int, default=None, help="ensemble size (default 3; 2 with --quick)")
    parser.add_argument("--neurons", type=int, default=None, help="neurons (default 8000; 100 with --quick)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the bench's run")
    parser.add_argument("--threads", type=int, default=None, help="ORT and torch threads (default: cores)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds of each load run (default 2; 1 quick)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results/...)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from bench.simulate import positive_or

    args.members = positive_or(parser, "--members", args.members, 2 if args.quick else 3)
    args.neurons = positive_or(parser, "--neurons", args.neurons, 100 if args.quick else 8000)
    args.threads = positive_or(parser, "--threads", args.threads, os.cpu_count() or 1)
    sizes = QUICK if args.quick else FULL
    if args.repeats is not None:
        sizes = replace(sizes, repeats=args.repeats)
    if min(args.members, args.neurons, args.epochs, args.threads, sizes.repeats) < 1:
        parser.error("--members, --neurons, --epochs, --threads and --repeats must be >= 1")

    load_before = os.getloadavg()
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="twin-serving-bench-"))
    os.environ.setdefault("TWIN_CACHE_DIR", str(work / "cache"))  # before twin reads it
    import torch

    from bench.simulate import machine
    from twin.artifact import load
    from twin.atomic import write_json

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {}
    try:
        print(
            "model: training and exporting" if args.run is None else f"model: exporting {args.run}",
            flush=True,
        )
        model = prepare_model(args, work)
        artifact = load(model.artifact, threads=args.threads)
        ort_twin = artifact.twin(model.data_key)
        device = (
            "cuda" if "CUDAExecutionProvider" in artifact.providers and torch.cuda.is_available() else "cpu"
        )
        layouts = ["channels_last", "nchw"]
        torch_models = {
            f"torch_{layout}": TorchEnsemble(
                model.run, model.data_key, channels_last=layout == "channels_last", device=device
            )
            for layout in layouts
        }
        members = torch_models["torch_channels_last"].members
        if members != ort_twin.n_members:
            raise RuntimeError(f"torch ensemble has {members} members, the artifact {ort_twin.n_members}")

        print("1. engines: ONNX Runtime vs torch eager", flush=True)
        one_call = None  # the artifact with every batch in one ONNX Runtime call, where that differs
        rows = ort_twin.gradient_rows_per_run  # the smaller of the two graphs' rows per call
        if rows is not None and rows < max(ENGINE_BATCHES):
            one_call = load(model.artifact, threads=args.threads, rows_per_run=max(ENGINE_BATCHES))
            one_call = one_call.twin(model.data_key)
        result["engines"] = part_engines(ort_twin, torch_models, sizes, args.seed, one_call)
        with servers_running(model.repository, args.threads) as servers:
            warm(servers["on"], model, ort_twin)
            warm(servers["off"], model, ort_twin)
            print("2. gRPC Predict vs in-process ONNX Runtime", flush=True)
            result["grpc"] = part_grpc(servers["on"], model, ort_twin, sizes, args.seed)
            print(f"3. dynamic batching on vs off, {BATCHING_CLIENTS} clients x batch 1", flush=True)
            result["batching"] = part_batching(servers, model, ort_twin, sizes, args.seed)
            print("4. gradient: gRPC vs torch autograd", flush=True)
            torch_model = torch_models["torch_channels_last"]
            result["gradient"] = part_gradient(
                servers["on"], model, ort_twin, torch_model, sizes, args.seed, one_call
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "serving",
        "quick": args.quick,
        "machine": {
            **machine(),
            **versions(),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "ort_providers": artifact.providers,
        },
        # Other processes on the machine slow both sides of every comparison (interleaved, so alike).
        "load_average_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d"),
        "config": {
            "threads": args.threads,
            "ort_rows_per_run": ort_twin.rows_per_run,  # the servers load the artifact alike
            "ort_gradient_rows_per_run": ort_twin.gradient_rows_per_run,
            "torch_layouts": layouts,
            "sizes": {
                "engine_calls": sizes.engine_calls,
                "grpc_images_per_run": sizes.grpc_images,
                "batching_requests_per_client": sizes.batching_requests_per_client,
                "gradient_calls": sizes.gradient_calls,
                "repeats": sizes.repeats,
            },
            "grpc_clients": "one thread and one channel per client; closed loop; responses decoded to numpy",
            "server": "serving.server.start in a child process on loopback, poll_interval_s None",
            "in_process": "OnnxTwin.predict on one shared twin, one thread per client",
            "images": "uint8 raw pixels at the model's resolution, on the wire and in process",
        },
        "model": {
            "name": model.name,
            "members": ort_twin.n_members,
            "neurons": ort_twin.n_neurons,
            "image_size": list(ort_twin.image_size),
            "data_key": model.data_key,
            "config": artifact.manifest["model"],
            **model.info,
        },
        **result,
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    result["batching"]["model_time_ceiling"] = batching_ceiling(result["engines"])
    result["targets"] = targets(result)
    print_table(result)
    tag = f"{os.cpu_count()}cpu" if device == "cpu" else torch.cuda.get_device_name().replace(" ", "_")
    path = args.out or RESULTS / f"serving-{'quick-' if args.quick else ''}{tag}.json"
    write_json(path, result)
    print(f"\nwrote {path} ({result['total_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    from bench.simulate import interrupt_on_sigterm

    interrupt_on_sigterm()
    main()
