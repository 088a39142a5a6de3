"""Load a twin artifact (manifest + ONNX graphs, DESIGN.md §1) and run it in process on ONNX Runtime.

`load(path)` checks the manifest and the sha256 of every file it lists before anything runs, so a
partial or tampered artifact is refused with the file named. `Artifact.twin(data_key)` gives an
`OnnxTwin` with the interface every twin has (DESIGN.md §3): predict, predict_members, gradient, info.
On CPU a large batch runs as consecutive ONNX Runtime calls of at most `rows_per_run` images (see
`default_rows_per_run`): per image, one call of many images costs more there than calls of few.
numpy and onnxruntime only; onnxruntime is imported on first use so `import twin` stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from twin.errors import FormatError, InvalidInput, ModelNotFound
from twin.resize import RESIZE_MODES, resize, resize_adjoint

__all__ = [
    "MANIFEST",
    "RESPONSE_UNITS",
    "SCHEMA_VERSION",
    "Artifact",
    "CheckedTwin",
    "OnnxTwin",
    "checksum",
    "default_rows_per_run",
    "execution_providers",
    "load",
    "neuron_columns",
    "recording_statistics",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
RESPONSE_UNITS = "recording response units"
_REQUIRED = ("schema_version", "name", "version", "data_keys", "recordings", "files")
_KEY_FIELDS = ("n_neurons", "neuron_ids", "image_size", "recording_image_size", "requires", "graphs")
# On CPU, rows per ONNX Runtime call are capped so that one member's readout lookups (rows x neurons x
# channels float32, the largest tensors of the graph) stay within this many bytes, i.e. in the
# last-level cache: beyond it every extra row of a batch costs more than the one before. Measured on 2
# cores of an AMD EPYC (32 MiB L3), 3 members of the cnn baseline x 8,000 neurons, 64 batches of 1 / 4 /
# all 64 rows: 106 / 97 / 74 images/s (1,000 neurons, 4 / 64 rows: 154 / 131).
CPU_RUN_BYTES = 8 * 2**20
MAX_ROWS_PER_RUN = 256
# The gradient graph keeps every layer's activations for its backward pass and runs on one thread: a
# call of it fills the cache with fewer rows. Measured as above, batches of 32: 1,000 neurons 36 images/s
# in calls of 4 vs 23 in calls of 32; 8,000 neurons 23 in calls of 1 vs 20 of 4 and 17 of 32.
GRADIENT_ROWS_DIVISOR = 8


def checksum(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, hex: what the manifest records for every file of an artifact."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FormatError(f"{folder}: not a folder; expected a twin artifact folder with {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(f"{path}: missing; not a twin artifact (or one still being written)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise FormatError(f"{path}: a {type(manifest).__name__}; expected a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise FormatError(f"{path}: fields {missing} missing; expected {list(_REQUIRED)}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise FormatError(
            f"{path}: schema_version {manifest['schema_version']!r}; this twin reads {SCHEMA_VERSION}"
        )
    for key in manifest["data_keys"]:
        entry = manifest["recordings"].get(key)
        if not isinstance(entry, dict) or any(f not in entry for f in _KEY_FIELDS):
            raise FormatError(f"{path}: recordings[{key!r}] lacks some of {list(_KEY_FIELDS)}")
        for graph in entry["graphs"].values():
            if graph not in manifest["files"]:
                raise FormatError(f"{path}: graph {graph} of {key} is not listed in files (no checksum)")
    return manifest


def _verify_files(folder: Path, files: dict[str, Any]) -> None:
    """Every listed file exists with its size and sha256: a partial or modified artifact is refused."""
    for name, expected in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or name == MANIFEST:
            raise FormatError(f"{folder / MANIFEST}: files lists {name!r}; expected names inside the folder")
        path = folder / relative
        if not path.is_file():
            raise FormatError(f"{path}: missing; the manifest lists it (partial or damaged artifact)")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise FormatError(f"{path}: {size} bytes; the manifest says {expected.get('bytes')} (modified?)")
        if checksum(path) != expected.get("sha256"):
            raise FormatError(f"{path}: sha256 differs from the manifest's; the file was modified or damaged")


def load(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    rows_per_run: int | None = None,
) -> Artifact:
    """Open and verify an artifact folder.

    threads: ONNX Runtime intra-op threads (None: its default). providers: ONNX Runtime execution
    providers in order of preference; None takes $TWIN_ORT_PROVIDERS (comma-separated) or else CUDA
    when this ONNX Runtime build has it (onnxruntime-gpu), then CPU. rows_per_run: the most images
    one ONNX Runtime call takes (a larger batch runs in consecutive calls, the same numbers); None takes
    $TWIN_ORT_ROWS_PER_RUN or else `default_rows_per_run`'s choice per recording.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidInput(f"threads: {threads!r}; expected an integer >= 1 or None")
    if rows_per_run is None and os.environ.get("TWIN_ORT_ROWS_PER_RUN"):
        text = os.environ["TWIN_ORT_ROWS_PER_RUN"].strip()
        try:
            rows_per_run = int(text, 10)
        except ValueError:
            rows_per_run = 0
        if rows_per_run < 1:
            raise InvalidInput(f"TWIN_ORT_ROWS_PER_RUN: {text!r}; expected an integer >= 1")
    if rows_per_run is not None and (
        isinstance(rows_per_run, bool) or not isinstance(rows_per_run, int) or rows_per_run < 1
    ):
        raise InvalidInput(f"rows_per_run: {rows_per_run!r}; expected an integer >= 1 or None")
    chosen = execution_providers(providers)
    folder = Path(path)
    manifest = _read_manifest(folder)
    _verify_files(folder, manifest["files"])
    return Artifact(folder, manifest, threads, chosen, rows_per_run)


def execution_providers(providers: Sequence[str] | None = None) -> list[str]:
    """The ONNX Runtime providers to run on: `providers` checked against this build, or the default."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None and os.environ.get("TWIN_ORT_PROVIDERS"):
        providers = [p.strip() for p in os.environ["TWIN_ORT_PROVIDERS"].split(",") if p.strip()]
    if providers is None:
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if isinstance(providers, str) or not providers:
        raise InvalidInput(f"providers: {providers!r}; expected a non-empty list of names from {available}")
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise InvalidInput(
            f"providers: {unknown} are not in this ONNX Runtime build; expected some of {available}"
        )
    return list(providers)


class Artifact:
    """A verified artifact folder: its manifest and, per data key, a twin built on first request."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        rows_per_run: int | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.threads = threads
        self.providers = list(providers)
        self.rows_per_run = rows_per_run  # None: default_rows_per_run() per recording
        self._twins: dict[str, OnnxTwin] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def data_keys(self) -> list[str]:
        return list(self.manifest["data_keys"])

    def twin(self, data_key: str | None = None) -> OnnxTwin:
        """The twin of one recording (data_key may be left out when the artifact holds one)."""
        if data_key is None:
            if len(self.data_keys) != 1:
                raise InvalidInput(f"data_key: None; artifact {self.name} holds {self.data_keys}, pick one")
            data_key = self.data_keys[0]
        if data_key not in self.data_keys:
            raise ModelNotFound(f"data_key: {data_key!r}; artifact {self.name} holds {self.data_keys}")
        with self._lock:
            if data_key not in self._twins:
                self._twins[data_key] = OnnxTwin(self, data_key)
            return self._twins[data_key]

    def __repr__(self) -> str:
        return (
            f"Artifact({self.name!r}, version={self.version}, data_keys={self.data_keys}, path={self.path})"
        )


def recording_statistics(entry: dict[str, Any]) -> dict[str, Any]:
    """What an in-silico experiment builds its stimuli and condition around, from a manifest's recording
    entry: the training images' pixel mean and sd (raw units; the gray level and contrast scale) and
    `mean_condition`, the trials' mean behaviour and pupil centre (raw units; None where the manifest
    does not hold it), the state an experiment shows its stimuli in when asked for "mean"."""
    pre = entry["preprocessing"]
    mean = {"behavior": pre.get("behavior_mean"), "pupil_center": pre.get("pupil_mean")}
    return {
        "image_mean": float(pre["image_mean"]),
        "image_std": float(pre["image_std"]),
        "mean_condition": {k: None if v is None else [float(x) for x in v] for k, v in mean.items()},
    }


def neuron_columns(
    columns: dict[int, int], neurons: Sequence[int] | np.ndarray | None, data_key: str | None
) -> slice | np.ndarray:
    """The response columns of neuron ids `neurons` (all for None), given a recording's id -> column map;
    an empty, non-integer or unknown id is refused naming it. Every twin checks neuron ids with this."""
    if neurons is None:
        return slice(None)
    ids = np.asarray(neurons)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise InvalidInput(
            f"neurons: {ids.dtype} array of shape {ids.shape}; expected a non-empty sequence of ids"
        )
    out = np.empty(ids.size, np.int64)
    for i, neuron in enumerate(ids.tolist()):
        if neuron not in columns:
            raise InvalidInput(f"neurons: id {neuron} is not a neuron of recording {data_key}")
        out[i] = columns[neuron]
    return out


def default_rows_per_run(
    manifest: dict[str, Any], n_neurons: int, providers: Sequence[str], *, gradient: bool = False
) -> int | None:
    """The most images per ONNX Runtime call of the response graph (or with `gradient`, the gradient
    graph) for a recording of `n_neurons`; None: no limit.

    On a GPU (the first provider is not the CPU's) a batch runs whole: larger batches fill the device.
    On CPU the largest power of two (1 to MAX_ROWS_PER_RUN) whose readout lookups fit CPU_RUN_BYTES,
    with the core's width from the manifest (64 channels where it does not say); for the gradient graph
    that divided by GRADIENT_ROWS_DIVISOR (at least 1).
    """
    if not providers or providers[0] != "CPUExecutionProvider":
        return None
    core = manifest.get("model", {}).get("core", {}) if isinstance(manifest.get("model"), dict) else {}
    channels = core.get("channels", 64) if isinstance(core, dict) else 64
    channels = channels if isinstance(channels, int) and channels > 0 else 64
    per_row = max(1, n_neurons) * channels * 4
    rows = 1
    while rows * 2 <= MAX_ROWS_PER_RUN and rows * 2 * per_row <= CPU_RUN_BYTES:
        rows *= 2
    return max(1, rows // GRADIENT_ROWS_DIVISOR) if gradient else rows


def _run_in_chunks(
    session: Any, feed: dict[str, np.ndarray], rows: int | None, member_axis: bool
) -> list[np.ndarray]:
    """session.run on consecutive slices of at most `rows` images, outputs joined on their batch axis
    (axis 1 of an output with `member_axis` and 3 dimensions, the members' (M, B, N); else axis 0)."""
    batch = next(iter(feed.values())).shape[0]
    if rows is None or batch <= rows:
        return list(session.run(None, feed))
    parts = [session.run(None, {k: v[i : i + rows] for k, v in feed.items()}) for i in range(0, batch, rows)]
    return [
        np.concatenate([p[j] for p in parts], axis=1 if member_axis and parts[0][j].ndim == 3 else 0)
        for j in range(len(parts[0]))
    ]


def _float32(a: np.ndarray) -> np.ndarray:
    """As float32; values beyond its range become inf, which the callers' finiteness checks refuse."""
    with np.errstate(over="ignore"):
        return a.astype(np.float32, copy=False)


def _session(path: Path, threads: int | None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT's notes on unfoldable nodes are not actionable here
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # ORT raises its own exception types for a graph it cannot load
        raise FormatError(f"{path}: ONNX Runtime cannot load it ({exc})") from None


class CheckedTwin:
    """The twin interface (DESIGN.md §3) over one recording, with every input checked the same way
    whatever runs the model: subclasses implement `run` (responses) and `run_gradient`.

    Inputs are in the recording's raw units (DESIGN.md §1): images (B, H, W) or (B, 1, H, W) at the
    model's or the recording's resolution, behaviour (B, 3) and pupil centre (B, 2) where the model
    needs them. Responses are on the recording's response scale. `entry` is a manifest's recording entry.
    """

    def __init__(
        self,
        name: str,
        version: int,
        data_key: str,
        entry: dict[str, Any],
        members: list[str],
        n_members: int,
    ) -> None:
        self.name = name
        self.version = version
        self.data_key = data_key
        self.entry = entry
        self.neuron_ids = np.asarray(entry["neuron_ids"], np.int64)
        self.n_neurons = int(entry["n_neurons"])
        self.image_size = (int(entry["image_size"][0]), int(entry["image_size"][1]))
        height, width = entry["recording_image_size"]
        self.recording_image_size = (int(height), int(width))
        self.requires = {k: bool(v) for k, v in entry["requires"].items()}
        # How recording-resolution images reach the model's: as in training (manifests without it: bilinear)
        self.resize = str(entry["preprocessing"].get("resize", "bilinear"))
        if self.resize not in RESIZE_MODES:
            raise FormatError(
                f"manifest: recording {data_key} preprocessing.resize is {self.resize!r}; "
                f"expected one of {list(RESIZE_MODES)}"
            )
        self._columns = {int(i): c for c, i in enumerate(self.neuron_ids)}
        self.members = list(members)
        self.n_members = int(n_members)

    def info(self) -> dict[str, Any]:
        """What a caller needs to know: identity, neurons, input sizes, required inputs, units."""
        return {
            "name": self.name,
            "version": self.version,
            "data_key": self.data_key,
            "n_neurons": self.n_neurons,
            "neuron_ids": self.neuron_ids.tolist(),
            "image_size": list(self.image_size),
            "recording_image_size": list(self.recording_image_size),
            "requires": dict(self.requires),
            "members": self.members,
            "n_members": self.n_members,
            "image_units": "raw pixel units",
            **recording_statistics(self.entry),
            "response_units": self.entry.get("response_units", RESPONSE_UNITS),
        }

    # ----- validation -----

    def _images(self, images: Any) -> tuple[np.ndarray, bool]:
        """(B, h, w) float32 at the model's resolution, and whether it was resized from the recording's."""
        a = np.asarray(images)
        sizes = f"(H, W) = {self.image_size} (model) or {self.recording_image_size} (recording)"
        if a.dtype.kind not in "iuf":
            raise InvalidInput(f"images: dtype {a.dtype}; expected real numbers (raw pixel units)")
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 3:
            raise InvalidInput(f"images: shape {a.shape}; expected (B, H, W) or (B, 1, H, W) with {sizes}")
        if a.shape[0] == 0:
            raise InvalidInput(f"images: shape {a.shape}, an empty batch; expected at least one image")
        a = _float32(a)
        if not np.all(np.isfinite(a)):
            raise InvalidInput("images: contains NaN or inf (or beyond float32); expected finite values")
        if a.shape[1:] == self.image_size:
            return a, False
        if a.shape[1:] == self.recording_image_size:
            return resize(a, self.image_size, self.resize), True
        raise InvalidInput(f"images: shape {a.shape}; expected {sizes}")

    def _extra(self, name: str, value: Any, batch: int, width: int) -> np.ndarray | None:
        """behavior (B, 3) / pupil_center (B, 2) as float32; None when the model does not use it."""
        if value is None:
            if self.requires.get(name):
                raise InvalidInput(
                    f"{name}: None; the twin of {self.data_key} needs ({batch}, {width}) in raw units"
                )
            return None
        a = np.asarray(value)
        if a.dtype.kind not in "iuf":
            raise InvalidInput(f"{name}: dtype {a.dtype}; expected real numbers")
        if a.shape != (batch, width):
            raise InvalidInput(f"{name}: shape {a.shape}; expected ({batch}, {width}), one row per image")
        a = _float32(a)
        if not np.all(np.isfinite(a)):
            raise InvalidInput(f"{name}: contains NaN or inf; expected finite values")
        return a if self.requires.get(name) else None

    def check_inputs(
        self, images: Any, behavior: Any = None, pupil_center: Any = None
    ) -> tuple[dict[str, np.ndarray], bool]:
        """The checked inputs as the graphs' feed (images at the model's resolution, float32; behaviour
        and pupil centre only where the model uses them), and whether the images were resized."""
        x, resized = self._images(images)
        feed = {"images": x}
        for name, value, width in (("behavior", behavior, 3), ("pupil_center", pupil_center, 2)):
            a = self._extra(name, value, x.shape[0], width)
            if a is not None:
                feed[name] = a
        return feed, resized

    def _neurons(self, neurons: Sequence[int] | np.ndarray | None) -> slice | np.ndarray:
        return neuron_columns(self._columns, neurons, self.data_key)

    def gradient_at_recording_resolution(self, gradient: np.ndarray) -> np.ndarray:
        """A gradient (B, h, w) w.r.t. model-resolution images as one w.r.t. the recording-resolution
        images they were resized from (the resize's adjoint)."""
        return resize_adjoint(gradient, self.recording_image_size, self.resize)

    # ----- the twin interface -----

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The model on a feed from `check_inputs`: [mean (B, N), std (B, N), members (M, B, N)]."""
        raise NotImplementedError

    def run_gradient(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The input gradient on a feed from `check_inputs` plus checked (B, N) float32 `weights`:
        (B, H, W) at the model's resolution."""
        raise NotImplementedError

    def _run(self, images: Any, behavior: Any, pupil_center: Any) -> list[np.ndarray]:
        return self.run(self.check_inputs(images, behavior, pupil_center)[0])

    def predict(
        self,
        images: Any,
        behavior: Any = None,
        pupil_center: Any = None,
        neurons: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and std across members, each (B, n) float32 (n: all neurons or `neurons` ids)."""
        columns = self._neurons(neurons)
        mean, std, _ = self._run(images, behavior, pupil_center)
        return mean[:, columns], std[:, columns]

    def predict_members(
        self,
        images: Any,
        behavior: Any = None,
        pupil_center: Any = None,
        neurons: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Every member's responses, (M, B, n) float32."""
        columns = self._neurons(neurons)
        return self._run(images, behavior, pupil_center)[2][:, :, columns]

    def gradient(
        self, images: Any, weights: Any, behavior: Any = None, pupil_center: Any = None
    ) -> np.ndarray:
        """d(sum_n weights[b, n] * mean[b, n]) / d images[b], (B, H, W) at the resolution images came in."""
        feed, resized = self.check_inputs(images, behavior, pupil_center)
        batch = feed["images"].shape[0]
        w = np.asarray(weights)
        if w.dtype.kind not in "iuf":
            raise InvalidInput(f"weights: dtype {w.dtype}; expected real numbers")
        if w.shape != (batch, self.n_neurons):
            raise InvalidInput(
                f"weights: shape {w.shape}; expected ({batch}, {self.n_neurons}), one per image and neuron"
            )
        w = _float32(w)
        if not np.all(np.isfinite(w)):
            raise InvalidInput("weights: contains NaN or inf; expected finite values")
        gradient = self.run_gradient({**feed, "weights": w})
        return self.gradient_at_recording_resolution(gradient) if resized else gradient


class OnnxTwin(CheckedTwin):
    """One recording's twin on ONNX Runtime. Thread-safe: sessions are shared, calls keep no state."""

    def __init__(self, artifact: Artifact, data_key: str):
        entry = artifact.manifest["recordings"][data_key]
        self.artifact = artifact
        self._responses = _session(
            artifact.path / entry["graphs"]["responses"], artifact.threads, artifact.providers
        )
        self._gradient: Any = None
        self._lock = threading.Lock()
        super().__init__(
            artifact.name,
            artifact.version,
            data_key,
            entry,
            list(artifact.manifest.get("members", [])),
            int(self._responses.get_outputs()[2].shape[0]),
        )
        self.rows_per_run = artifact.rows_per_run or default_rows_per_run(
            artifact.manifest, self.n_neurons, artifact.providers
        )
        self.gradient_rows_per_run = artifact.rows_per_run or default_rows_per_run(
            artifact.manifest, self.n_neurons, artifact.providers, gradient=True
        )
        inputs = {i.name for i in self._responses.get_inputs()}
        expected = {"images"} | {name for name, needed in self.requires.items() if needed}
        if inputs != expected:
            raise FormatError(
                f"{artifact.path / entry['graphs']['responses']}: inputs {sorted(inputs)}; "
                f"the manifest says {sorted(expected)}"
            )

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The response graph on a feed from `check_inputs`: [mean (B, N), std (B, N), members (M, B, N)],
        in calls of at most `rows_per_run` images."""
        return _run_in_chunks(self._responses, feed, self.rows_per_run, member_axis=True)

    def run_gradient(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The gradient graph on a feed from `check_inputs` plus checked (B, N) float32 `weights`, in calls
        of at most `gradient_rows_per_run` images."""
        session = self._gradient_session()
        (gradient,) = _run_in_chunks(session, feed, self.gradient_rows_per_run, member_axis=False)
        return gradient

    def _gradient_session(self) -> Any:
        """Built on first use, with one intra-op thread: ONNX Runtime's multi-threaded ScatterND(add),
        which the readout's gradient needs, loses updates when indices repeat (TOOLCHAIN.md)."""
        with self._lock:
            if self._gradient is None:
                self._gradient = _session(
                    self.artifact.path / self.entry["graphs"]["gradient"], 1, self.artifact.providers
                )
            return self._gradient

    def __repr__(self) -> str:
        return f"OnnxTwin({self.artifact.name!r}, data_key={self.data_key!r}, neurons={self.n_neurons})"
