"""HTTP serving with BentoML: the gRPC server's Predict, Gradient and Evaluate as JSON (and .npy) endpoints.

`TwinHTTP` is a BentoML service (`bentoml serve serving.bento_service:TwinHTTP`) over every artifact of a
model repository (`ROOT/<model>/<version>/`, serving/repository.py), configured by environment variables
so that `bentoml serve` needs no arguments of ours (`http_command` writes both):

- `TWIN_REPOSITORY`: the repository folder (required). It is loaded in the background after start and
  re-scanned every `TWIN_POLL_INTERVAL` seconds (default 2; 0: never), so a new version is served without
  a restart. `/readyz` answers 503 until some model has a ready version.
- `TWIN_HELDOUT`: recording folders, or folders of recordings, with held-out responses (`held_out/`),
  separated by `os.pathsep`; empty or unset: `/evaluate` answers 404 naming the data key.
- `TWIN_MAX_BATCH_SIZE`, `TWIN_MAX_QUEUE_DELAY_MS`, `TWIN_MAX_QUEUE_SIZE`, `TWIN_THREADS`: as
  `twin serve`'s options of the same names (a request carries at most max-batch-size images, as on gRPC).

A bad setting stops the service's start with its message logged (and BentoML retries the start), so
`http_command` checks the folders before handing them over.

Endpoints (POST, JSON unless noted; `version` left out or 0: the serving version; `data_key` may be left
out for a model of one recording; images, behaviour and pupil centre in raw units, DESIGN.md §1):

- `/predict` {model, version?, data_key?, images (B, H, W) or (B, 1, H, W), behavior? (B, 3),
  pupil_center? (B, 2), neuron_ids?, return_members?} -> {model, version, data_key, mean (B, n),
  std (B, n), neuron_ids (n), members? (M, B, n)}.
- `/predict_npy`: multipart form, `images` an uploaded .npy file (`behavior`, `pupil_center` too where
  the model needs them), the other fields as form fields -> the mean (B, n) as .npy bytes, with the model,
  version and data key in `X-Twin-*` headers. For large batches: no JSON encoding of arrays either way.
  `curl -F images=@x.npy -F model=M -F data_key=K http://HOST:PORT/predict_npy -o mean.npy`
- `/gradient` {model, version?, data_key?, images, weights (B, n), behavior?, pupil_center?,
  neuron_ids?} -> {model, version, data_key, gradient (shaped as images)}: d sum(weights * mean) / d
  images; weights cover every neuron, or the columns of `neuron_ids` when given.
- `/evaluate` {model, version?, data_key?, tier ("test"), per_neuron?} -> {model, version, data_key, tier,
  single_trial_correlation, correlation_to_average, feve, fev_fraction_above_threshold,
  oracle_correlation, n_neurons, n_trials, n_images, per_neuron?}: scores on the held-out data the server
  keeps, never its responses. A score a tier cannot define (no repeats) is null.
- `/models` {} -> {models: [{name, serving_version, versions, data_keys}]}; `/model_info` {model,
  version?} -> {model, version, data_keys: {key: info}} with each twin's `info()` (neuron ids, sizes).
- BentoML's own `/readyz`, `/livez` and `/metrics`; the latter also holds the batch sizes, queue times
  and model load events of serving/observability.py (`twin_*`).

Errors answer with the status of the one error table (serving/status.py, through the usual gRPC-to-HTTP
mapping: InvalidInput 400, ModelNotFound 404, ModelNotReady 503, Overloaded 429) and a JSON body
{error, type, field?}, `field` naming the request field the message starts with. A body that does not
fit the endpoint's schema (a missing `model`, a string for `version`) gets BentoML's 400, which names
the field in `detail[].loc`. The service keeps serving after any of them.

Batching: BentoML's batchable APIs (`@bentoml.api(batchable=True)`) run one dispatcher per endpoint that
concatenates the single batched argument of concurrent calls with no notion of a key, so requests for
different models, versions, data keys or image sizes would land in one array that no single ONNX call can
run. Predict and Gradient therefore go through the same keyed `DynamicBatcher` as the gRPC server
(serving/runtime.py): concurrent requests for one (model, version, data key) and input shape share one
ONNX Runtime call, running in a thread pool off the event loop. numpy, ONNX Runtime and BentoML only:
no torch.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import bentoml
import grpc
import numpy as np
import pydantic
from bentoml.validators import ContentType
from starlette.responses import Response

from serving.heldout import HeldOutData
from serving.observability import Metrics
from serving.repository import ModelRepository
from serving.runtime import Runtime, load_heldout
from serving.status import grpc_status
from twin.errors import FormatError, InvalidInput, TwinError

__all__ = [
    "ENV_HELDOUT",
    "ENV_REPOSITORY",
    "HTTP_STATUS",
    "NPY_MEDIA_TYPE",
    "HttpSettings",
    "TwinHTTP",
    "http_command",
    "http_status",
]

log = logging.getLogger(__name__)

ENV_REPOSITORY = "TWIN_REPOSITORY"
ENV_HELDOUT = "TWIN_HELDOUT"
ENV_POLL_INTERVAL = "TWIN_POLL_INTERVAL"
ENV_MAX_BATCH_SIZE = "TWIN_MAX_BATCH_SIZE"
ENV_MAX_QUEUE_DELAY_MS = "TWIN_MAX_QUEUE_DELAY_MS"
ENV_MAX_QUEUE_SIZE = "TWIN_MAX_QUEUE_SIZE"
ENV_THREADS = "TWIN_THREADS"

NPY_MEDIA_TYPE = "application/octet-stream"
SERVICE = "serving.bento_service:TwinHTTP"

# HTTP status of each gRPC status code the error table (serving/status.py) gives (google.rpc.Code).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Batches running at once and worker threads (those plus room for Evaluate), as in the gRPC server.
_CONCURRENT_BATCHES = 2
_WORKERS = _CONCURRENT_BATCHES + 2
_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):")
_SCORES = (
    "single_trial_correlation",
    "correlation_to_average",
    "feve",
    "fev_fraction_above_threshold",
    "oracle_correlation",
)


def http_status(exc: BaseException) -> int:
    """The HTTP status of an error: its gRPC status (serving/status.py) mapped to HTTP, else 500."""
    return HTTP_STATUS.get(grpc_status(exc), 500)


# ---------------------------------------------------------------------------------------------------
# Settings and the command that starts the server


class HttpSettings:
    """The service's settings, read from the environment (`from_env`), each checked with its name."""

    def __init__(
        self,
        repository: Path,
        heldout: list[Path],
        poll_interval_s: float | None = 2.0,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 2.0,
        max_queue_size: int = 256,
        threads: int | None = None,
    ) -> None:
        self.repository = repository
        self.heldout = heldout
        self.poll_interval_s = poll_interval_s
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = max_queue_delay_ms
        self.max_queue_size = max_queue_size
        self.threads = threads

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> HttpSettings:
        env = dict(os.environ if environ is None else environ)
        root = env.get(ENV_REPOSITORY, "")
        if not root:
            raise InvalidInput(f"{ENV_REPOSITORY}: unset; expected the model repository folder")
        repository = Path(root)
        if not repository.is_dir():
            raise FormatError(f"{ENV_REPOSITORY}: {root} is not a folder; expected ROOT/<model>/<version>/")
        heldout = [Path(p) for p in env.get(ENV_HELDOUT, "").split(os.pathsep) if p]
        poll = _number(env, ENV_POLL_INTERVAL, 2.0, 0.0)
        threads = _integer(env, ENV_THREADS, 0, 0)
        return cls(
            repository,
            heldout,
            poll_interval_s=poll or None,
            max_batch_size=_integer(env, ENV_MAX_BATCH_SIZE, 32, 1),
            max_queue_delay_ms=_number(env, ENV_MAX_QUEUE_DELAY_MS, 2.0, 0.0),
            max_queue_size=_integer(env, ENV_MAX_QUEUE_SIZE, 256, 1),
            threads=threads or None,
        )

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables `from_env` reads."""
        env = {
            ENV_REPOSITORY: str(self.repository.resolve()),
            ENV_HELDOUT: os.pathsep.join(str(p.resolve()) for p in self.heldout),
            ENV_POLL_INTERVAL: str(self.poll_interval_s or 0),
            ENV_MAX_BATCH_SIZE: str(self.max_batch_size),
            ENV_MAX_QUEUE_DELAY_MS: str(self.max_queue_delay_ms),
            ENV_MAX_QUEUE_SIZE: str(self.max_queue_size),
        }
        if self.threads is not None:
            env[ENV_THREADS] = str(self.threads)
        return env


def _number(env: dict[str, str], name: str, default: float, low: float) -> float:
    """A number >= low from the environment variable `name` (default when unset or empty)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text!r}; expected a number") from None
    if not (math.isfinite(value) and value >= low):
        raise InvalidInput(f"{name}: {text!r}; expected a finite number >= {low}")
    return value


def _integer(env: dict[str, str], name: str, default: int, low: int) -> int:
    """An integer >= low from the environment variable `name` (default when unset or empty)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text!r}; expected an integer") from None
    if value < low:
        raise InvalidInput(f"{name}: {text!r}; expected an integer >= {low}")
    return value


def http_command(
    repository: str | os.PathLike[str],
    *,
    port: int,
    host: str = "127.0.0.1",
    heldout: Sequence[str | os.PathLike[str]] = (),
    poll_interval_s: float | None = 2.0,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 2.0,
    max_queue_size: int = 256,
    threads: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment (to add to the caller's) that serve `repository` over HTTP.

    Run as `subprocess.Popen(argv, env={**os.environ, **env})`; SIGTERM stops it and its workers.
    Each call makes a fresh BENTOML_HOME under the temporary folder (small: BentoML's scratch files).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput(f"port: {port!r}; expected 1-65535 (clients must know the HTTP port)")
    if isinstance(heldout, str | os.PathLike):
        heldout = [heldout]
    settings = HttpSettings(
        Path(repository),
        [Path(p) for p in heldout],
        poll_interval_s,
        max_batch_size,
        max_queue_delay_ms,
        max_queue_size,
        threads,
    )
    if not settings.repository.is_dir():
        raise FormatError(f"repository: {repository} is not a folder; expected ROOT/<model>/<version>/")
    missing = [str(p) for p in settings.heldout if not p.exists()]
    if missing:
        raise FormatError(f"heldout: {missing} do not exist; expected recording folders or folders of them")
    root = str(Path(__file__).resolve().parent.parent)  # where `serving` imports from
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    # A home of its own: BentoML keeps Prometheus' multiprocess files there and empties them at start,
    # so two servers sharing one would wipe and mix each other's metrics.
    home = tempfile.mkdtemp(prefix="twin-bentoml-")
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    argv += ["--working-dir", root]
    env = {
        **settings.environment(),
        "PYTHONPATH": python_path,
        "BENTOML_HOME": home,
        "BENTOML_DO_NOT_TRACK": "True",
    }
    return argv, env


# ---------------------------------------------------------------------------------------------------
# Request and response helpers


def _error(exc: TwinError) -> Response:
    body: dict[str, Any] = {"error": str(exc), "type": type(exc).__name__}
    match = _FIELD.match(str(exc))
    if match:
        body["field"] = match.group(1)
    return _json(body, http_status(exc))


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, media_type="application/json")


def _array(field: str, value: Any) -> np.ndarray | None:
    """A JSON value (nested lists of numbers) as an array; InvalidInput naming `field` otherwise."""
    if value is None:
        return None
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{field}: not a rectangular array; expected nested lists of equal lengths"
        ) from None
    if a.dtype.kind not in "iuf":
        raise InvalidInput(f"{field}: holds {a.dtype} values; expected numbers")
    return a


def _npy(field: str, path: Path | None) -> np.ndarray | None:
    """An uploaded .npy file as an array (no pickles); InvalidInput naming `field` otherwise."""
    if path is None:
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"{field}: not a readable .npy file ({exc}); expected numpy.save output") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf":
        raise InvalidInput(f"{field}: a .npy of {getattr(a, 'dtype', type(a))}; expected numbers")
    return a


def _finite_or_none(values: Any) -> Any:
    """JSON-ready: floats as they are, NaN and inf as null (JSON has neither)."""
    if values is None:
        return None
    a = np.asarray(values, dtype=float)
    if a.ndim == 0:
        return float(a) if math.isfinite(a) else None
    return [v if math.isfinite(v) else None for v in a.tolist()]


def _scores(scores: dict[str, Any]) -> dict[str, Any]:
    """Evaluate's result as JSON: the metrics and counts (and per-neuron arrays), never responses."""
    out: dict[str, Any] = {}
    for name in _SCORES:
        out[name] = _finite_or_none(scores.get(name))
    for name in ("n_neurons", "n_trials", "n_images"):
        out[name] = int(scores[name])
    detail = scores.get("per_neuron")
    if detail is not None:
        out["per_neuron"] = {
            "neuron_ids": np.asarray(detail["neuron_ids"], np.int64).tolist(),
            "single_trial_correlation": _finite_or_none(detail["single_trial_correlation"]),
            "correlation_to_average": _finite_or_none(detail["correlation_to_average"]),
            "feve": _finite_or_none(detail["feve"]),
        }
    return out


# ---------------------------------------------------------------------------------------------------
# The service

NpyFile = Annotated[Path, ContentType(NPY_MEDIA_TYPE)]
# BentoML reads a form field as JSON when it parses as JSON: a name such as "7" stays text.
FormText = Annotated[str, pydantic.BeforeValidator(lambda v: str(v) if type(v) is int else v)]


@bentoml.service(name="twin", workers=1, traffic={"timeout": 600})
class TwinHTTP:
    """Every model of the repository in `TWIN_REPOSITORY` over HTTP; see the module docstring."""

    def __init__(self) -> None:
        settings = HttpSettings.from_env()
        self.settings = settings
        self.metrics = Metrics()
        threads = settings.threads

        def loader(path: Path) -> Any:
            from twin.artifact import load

            return load(path, threads=threads)

        self.repository = ModelRepository(settings.repository, loader, on_event=self.metrics.model_event)
        self.heldout: HeldOutData | None = load_heldout(settings.heldout)
        self.executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="twin-http-model")
        self.runtime = Runtime(
            self.repository,
            self.executor,
            self.metrics,
            heldout=self.heldout,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            max_concurrent_batches=_CONCURRENT_BATCHES,
        )
        self._polling = threading.Lock()  # polling starts after the first scan, never after shutdown
        self._stopped = False
        # Load in the background: the server answers from the start, /readyz with 503 until some model
        # is ready.
        threading.Thread(target=self._load, name="twin-http-load", daemon=True).start()

    def _load(self) -> None:
        try:
            report = self.repository.reload()
        except Exception:
            log.exception("model repository %s: first scan failed", self.settings.repository)
        else:
            for status in report.loaded:
                log.info("model %s version %s ready", status.model, status.version)
        with self._polling:
            if self.settings.poll_interval_s is not None and not self._stopped:
                self.repository.start_polling(self.settings.poll_interval_s)

    def __is_ready__(self) -> bool:
        """Ready once some model has a ready version."""
        return any(status.serving_version is not None for status in self.repository.models())

    def __metrics__(self, content: str) -> str:
        """BentoML's metrics and ours (batching, queueing, model loads).

        Under `bentoml serve` Prometheus runs in multiprocess mode: BentoML's collector reads every
        metric of the process from its files, ours included, so they are added only outside that mode.
        """
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return content
        return content + self.metrics.render().decode("utf-8")

    @bentoml.on_shutdown
    async def _shutdown(self) -> None:
        with self._polling:
            self._stopped = True
        await self.runtime.close()
        self.repository.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    # ----- calls -----

    async def _call(self, handler: Callable[[], Any]) -> Any:
        """Run a handler coroutine; a twin error becomes its HTTP status with a JSON message."""
        try:
            return await handler()
        except TwinError as exc:
            log.info("request refused: %s: %s", type(exc).__name__, exc)
            return _error(exc)

    async def _predict(
        self,
        model: str,
        version: int | None,
        data_key: str | None,
        images: np.ndarray | None,
        behavior: np.ndarray | None,
        pupil_center: np.ndarray | None,
        neuron_ids: Sequence[int] | None,
        members: bool,
    ) -> tuple[dict[str, Any], Any]:
        lease, twin = self.runtime.acquire(model, version or 0, data_key or "")
        with lease:
            prediction = await self.runtime.predict(
                lease, twin, images, behavior, pupil_center, neuron_ids=neuron_ids or (), members=members
            )
        identity = {"model": lease.model, "version": lease.version, "data_key": twin.data_key}
        return identity, prediction

    @bentoml.api(route="/predict")
    async def predict(
        self,
        model: str,
        images: list[Any] | None = None,
        version: int | None = None,
        data_key: str | None = None,
        behavior: list[Any] | None = None,
        pupil_center: list[Any] | None = None,
        neuron_ids: list[int] | None = None,
        return_members: bool = False,
    ) -> dict[str, Any]:
        """Ensemble mean and std of a twin's responses to images (and members' on request)."""

        async def handle() -> Response:
            identity, prediction = await self._predict(
                model,
                version,
                data_key,
                _array("images", images),
                _array("behavior", behavior),
                _array("pupil_center", pupil_center),
                neuron_ids,
                return_members,
            )
            body = {
                **identity,
                "mean": prediction.mean.tolist(),
                "std": prediction.std.tolist(),
                "neuron_ids": prediction.neuron_ids.tolist(),
            }
            if prediction.members is not None:
                body["members"] = prediction.members.tolist()
            return _json(body)

        return await self._call(handle)

    @bentoml.api(route="/predict_npy")
    async def predict_npy(
        self,
        images: NpyFile,
        model: FormText,
        version: int | None = None,
        data_key: FormText | None = None,
        behavior: Path | None = None,
        pupil_center: Path | None = None,
        neuron_ids: list[int] | None = None,
    ) -> NpyFile:
        """As /predict, from .npy uploads (multipart): answers the mean (B, n) as .npy bytes."""

        async def handle() -> Response:
            identity, prediction = await self._predict(
                model,
                version,
                data_key,
                _npy("images", images),
                _npy("behavior", behavior),
                _npy("pupil_center", pupil_center),
                neuron_ids,
                False,
            )
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(prediction.mean), allow_pickle=False)
            headers = {f"X-Twin-{k.replace('_', '-').title()}": str(v) for k, v in identity.items()}
            return Response(buffer.getvalue(), 200, headers=headers, media_type=NPY_MEDIA_TYPE)

        return await self._call(handle)

    @bentoml.api(route="/gradient")
    async def gradient(
        self,
        model: str,
        images: list[Any] | None = None,
        weights: list[Any] | None = None,
        version: int | None = None,
        data_key: str | None = None,
        behavior: list[Any] | None = None,
        pupil_center: list[Any] | None = None,
        neuron_ids: list[int] | None = None,
    ) -> dict[str, Any]:
        """d sum(weights * mean) / d images, in the shape of the images."""

        async def handle() -> Response:
            lease, twin = self.runtime.acquire(model, version or 0, data_key or "")
            with lease:
                result = await self.runtime.gradient(
                    lease,
                    twin,
                    _array("images", images),
                    _array("weights", weights),
                    _array("behavior", behavior),
                    _array("pupil_center", pupil_center),
                    neuron_ids=neuron_ids or (),
                )
            body = {
                "model": lease.model,
                "version": lease.version,
                "data_key": twin.data_key,
                "gradient": result.gradient.tolist(),
            }
            return _json(body)

        return await self._call(handle)

    @bentoml.api(route="/evaluate")
    async def evaluate(
        self,
        model: str,
        version: int | None = None,
        data_key: str | None = None,
        tier: str = "test",
        per_neuron: bool = False,
    ) -> dict[str, Any]:
        """SENSORIUM scores of a twin on the server's held-out data (scores only, never responses)."""

        async def handle() -> Response:
            lease, twin = self.runtime.acquire(model, version or 0, data_key or "")
            with lease:
                scores = await self.runtime.evaluate(twin, tier, per_neuron)
            body = {
                "model": lease.model,
                "version": lease.version,
                "data_key": twin.data_key,
                "tier": tier,
                **_scores(scores),
            }
            return _json(body)

        return await self._call(handle)

    @bentoml.api(route="/models")
    async def models(self) -> dict[str, Any]:
        """Every model: its serving version, each version's state, the serving version's data keys."""
        listing = [
            {
                "name": status.name,
                "serving_version": status.serving_version,
                "versions": [
                    {"version": v.version, "state": v.state, "serving": v.serving, "error": v.error}
                    for v in status.versions
                ],
                "data_keys": self.repository.serving_data_keys(status),
            }
            for status in self.repository.models()
        ]
        return {"models": listing}

    @bentoml.api(route="/model_info")
    async def model_info(self, model: str, version: int | None = None) -> dict[str, Any]:
        """One version's twins: neuron ids, image sizes, required inputs, members, units."""

        async def handle() -> Response:
            with self.repository.acquire(model, version or None) as lease:
                artifact = lease.artifact
                infos = {key: artifact.twin(key).info() for key in artifact.data_keys}
                return _json({"model": lease.model, "version": lease.version, "data_keys": infos})

        return await self._call(handle)
