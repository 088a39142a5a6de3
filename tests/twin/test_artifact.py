"""The artifact loader refuses damaged folders; the in-process ONNX twin checks what it is given."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from twin import artifact
from twin.errors import FormatError, InvalidInput, ModelNotFound


@pytest.fixture(scope="module")
def loaded(tiny_artifact) -> artifact.Artifact:
    return artifact.load(tiny_artifact, threads=2)


@pytest.fixture
def copy(tiny_artifact, tmp_path) -> Path:
    """A private copy of the artifact, free to damage."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))


def _images(batch: int = 3, size: tuple[int, int] = (36, 64), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, *size)).astype(np.uint8)


def test_load_reads_the_manifest(loaded, tiny_artifact):
    assert loaded.name == "cnn-tiny" and loaded.version == 1 and loaded.path == tiny_artifact
    assert loaded.data_keys == ["90001-1-1", "90002-1-1"]
    twin = loaded.twin("90002-1-1")
    assert loaded.twin("90002-1-1") is twin  # sessions are built once per data key
    info = twin.info()
    assert info["name"] == "cnn-tiny" and info["data_key"] == "90002-1-1" and info["n_neurons"] == 150
    assert info["image_size"] == [36, 64] and info["recording_image_size"] == [36, 64]
    assert info["requires"] == {"behavior": False, "pupil_center": False}
    assert info["response_units"] == "recording response units" and info["members"] == ["member-0"]
    pre = loaded.manifest["recordings"]["90002-1-1"]["preprocessing"]
    assert info["image_mean"] == pre["image_mean"] and info["image_std"] == pre["image_std"]
    assert 100 < info["image_mean"] < 140 and 40 < info["image_std"] < 70  # the simulated images
    assert info["neuron_ids"] == loaded.manifest["recordings"]["90002-1-1"]["neuron_ids"]
    with pytest.raises(InvalidInput, match=r"data_key: None.*90001-1-1"):
        loaded.twin()
    with pytest.raises(ModelNotFound, match=r"data_key: '1-2-3'"):
        loaded.twin("1-2-3")


def test_info_says_the_training_trials_mean_condition(loaded, tiny_paths):
    """The state an experiment shows stimuli in when asked for "mean": the recording's mean behaviour and
    pupil centre in raw units, from the statistics it was trained with (zeros where the track zeroed them)."""
    from twin.data import load_recording

    for key in loaded.data_keys:
        stats = load_recording(tiny_paths[key], progress=False).statistics
        mean = loaded.twin(key).info()["mean_condition"]
        for name in ("behavior", "pupil_center"):
            np.testing.assert_allclose(mean[name], stats[name]["all"]["mean"], rtol=1e-6)
    behavior = loaded.twin("90002-1-1").info()["mean_condition"]["behavior"]
    assert len(behavior) == 3 and all(v > 0 for v in (behavior[0], behavior[2]))  # pupil size, running
    assert loaded.twin("90001-1-1").info()["mean_condition"]["behavior"] == [0.0, 0.0, 0.0]  # zeroed


def test_a_manifest_without_a_mean_behaviour_says_none(copy):
    """Manifests written before the mean behaviour was kept load, and say they do not know it."""
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["recordings"].values():
        del entry["preprocessing"]["behavior_mean"]
    path.write_text(json.dumps(manifest))
    info = artifact.load(copy, threads=1).twin("90002-1-1").info()
    assert info["mean_condition"]["behavior"] is None and len(info["mean_condition"]["pupil_center"]) == 2


def test_a_manifest_with_an_unknown_resize_is_refused_naming_it(copy):
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["recordings"]["90002-1-1"]["preprocessing"]["resize"] == "bilinear"  # cnn-tiny's
    manifest["recordings"]["90002-1-1"]["preprocessing"]["resize"] = "cubic"
    path.write_text(json.dumps(manifest))
    loaded = artifact.load(copy, threads=1)
    message = r"recording 90002-1-1 preprocessing\.resize is 'cubic'; expected one of"
    with pytest.raises(FormatError, match=message):
        loaded.twin("90002-1-1")
    assert loaded.twin("90001-1-1").resize == "bilinear"  # the other recording still loads


def test_predictions_have_the_documented_shapes_and_types(loaded):
    twin = loaded.twin("90001-1-1")
    images = _images()
    mean, std = twin.predict(images)
    assert mean.shape == std.shape == (3, 150) and mean.dtype == std.dtype == np.float32
    assert np.all(mean > 0) and np.all(std >= 0)
    members = twin.predict_members(images)
    assert members.shape == (twin.n_members, 3, 150)
    np.testing.assert_allclose(members.mean(0), mean, rtol=1e-5)
    same, _ = twin.predict(images[:, None].astype(np.float64))  # (B, 1, H, W), any real dtype
    np.testing.assert_allclose(same, mean, rtol=1e-6)
    gradient = twin.gradient(images, np.ones((3, 150)))
    assert gradient.shape == (3, 36, 64) and gradient.dtype == np.float32 and np.any(gradient != 0)


def test_a_neuron_subset_is_the_columns_of_the_full_prediction(loaded):
    twin = loaded.twin("90002-1-1")
    images = _images(seed=1)
    mean, std = twin.predict(images)
    ids = twin.neuron_ids[[7, 0, 149, 7]]
    sub_mean, sub_std = twin.predict(images, neurons=ids.tolist())
    np.testing.assert_array_equal(sub_mean, mean[:, [7, 0, 149, 7]])
    np.testing.assert_array_equal(sub_std, std[:, [7, 0, 149, 7]])
    members = twin.predict_members(images, neurons=ids)
    np.testing.assert_array_equal(members, twin.predict_members(images)[:, :, [7, 0, 149, 7]])
    unknown = int(twin.neuron_ids.max()) + 1
    with pytest.raises(InvalidInput, match=rf"neurons: id {unknown} is not a neuron of recording 90002-1-1"):
        twin.predict(images, neurons=[int(ids[0]), unknown])
    with pytest.raises(InvalidInput, match=r"neurons: .*non-empty"):
        twin.predict(images, neurons=[])


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 36)), r"images: shape \(2, 36\); expected \(B, H, W\) or \(B, 1, H, W\)"),
        (np.zeros((2, 3, 36, 64)), r"images: shape \(2, 3, 36, 64\)"),
        (np.zeros((2, 40, 64)), r"images: shape \(2, 40, 64\); expected \(H, W\) = \(36, 64\) \(model\)"),
        (np.zeros((0, 36, 64)), r"images: shape \(0, 36, 64\), an empty batch"),
        (np.full((1, 36, 64), np.nan), "images: contains NaN or inf"),
        (np.full((1, 36, 64), 1e300), "images: contains NaN or inf"),
        (np.zeros((1, 36, 64), complex), "images: dtype complex128; expected real numbers"),
        (np.array([["a"]]), "images: dtype <U1; expected real numbers"),
    ],
)
def test_bad_images_are_refused_with_the_field_and_the_value(loaded, images, message):
    twin = loaded.twin("90001-1-1")
    with pytest.raises(InvalidInput, match=message):
        twin.predict(images)
    with pytest.raises(InvalidInput, match=message):
        twin.gradient(images, np.ones((max(len(images), 1), 150)))


def test_bad_weights_and_extra_inputs_are_refused(loaded):
    twin = loaded.twin("90001-1-1")
    images = _images(2)
    with pytest.raises(InvalidInput, match=r"weights: shape \(2, 149\); expected \(2, 150\)"):
        twin.gradient(images, np.ones((2, 149)))
    with pytest.raises(InvalidInput, match=r"weights: shape \(150,\); expected \(2, 150\)"):
        twin.gradient(images, np.ones(150))
    with pytest.raises(InvalidInput, match="weights: contains NaN"):
        twin.gradient(images, np.full((2, 150), np.inf))
    with pytest.raises(InvalidInput, match=r"behavior: shape \(3, 3\); expected \(2, 3\)"):
        twin.predict(images, behavior=np.ones((3, 3)))
    mean, _ = twin.predict(images, behavior=np.ones((2, 3)), pupil_center=np.zeros((2, 2)))
    np.testing.assert_array_equal(mean, twin.predict(images)[0])  # an image-only twin ignores them


def test_concurrent_callers_get_the_same_answers(loaded):
    twin = loaded.twin("90001-1-1")
    batches = [_images(4, seed=s) for s in range(8)]
    expected = [twin.predict(b)[0] for b in batches]
    weights = np.ones((4, 150), np.float32)
    gradients = [twin.gradient(b, weights) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        means = list(pool.map(lambda b: twin.predict(b)[0], batches))
        grads = list(pool.map(lambda b: twin.gradient(b, weights), batches))
    for a, b in zip(means + grads, expected + gradients, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_modified_file_is_refused(copy):
    graph = copy / "responses-90001-1-1.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"responses-90001-1-1\.onnx: sha256 differs"):
        artifact.load(copy)


def test_a_truncated_or_missing_file_is_refused(copy):
    graph = copy / "gradient-90002-1-1.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(FormatError, match=r"gradient-90002-1-1\.onnx: \d+ bytes; the manifest says"):
        artifact.load(copy)
    graph.unlink()
    with pytest.raises(FormatError, match=r"gradient-90002-1-1\.onnx: missing"):
        artifact.load(copy)


def test_a_missing_or_foreign_manifest_is_refused(copy, tmp_path):
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(FormatError, match=r"manifest\.json: schema_version 99; this twin reads 1"):
        artifact.load(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"manifest\.json: not valid JSON"):
        artifact.load(copy)
    escape = {**manifest, "files": {**manifest["files"], "../outside": {"sha256": "", "bytes": 0}}}
    (copy / "manifest.json").write_text(json.dumps(escape))
    with pytest.raises(FormatError, match=r"files lists '\.\./outside'"):
        artifact.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(FormatError, match=r"manifest\.json: missing; not a twin artifact"):
        artifact.load(copy)
    with pytest.raises(FormatError, match="not a folder"):
        artifact.load(tmp_path / "nowhere")
    with pytest.raises(InvalidInput, match="threads: 0"):
        artifact.load(copy, threads=0)


def test_public_names_exist():
    from twin import resize

    for module in (artifact, resize):
        assert module.__all__ and all(hasattr(module, name) for name in module.__all__)


def test_serving_an_artifact_never_imports_torch(tiny_artifact):
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import twin.artifact\n"
        "light = 'onnxruntime' not in sys.modules\n"
        f"t = twin.artifact.load({str(tiny_artifact)!r}).twin('90001-1-1')\n"
        "t.predict(np.zeros((1, 36, 64))); t.gradient(np.zeros((1, 36, 64)), np.ones((1, 150)))\n"
        "print(light, [m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "[]"]


def test_execution_providers_are_checked_against_this_build(tiny_artifact, monkeypatch):
    import onnxruntime as ort

    monkeypatch.delenv("TWIN_ORT_PROVIDERS", raising=False)
    default = artifact.execution_providers()
    assert default[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in default) == ("CUDAExecutionProvider" in ort.get_available_providers())
    assert artifact.load(tiny_artifact, providers=["CPUExecutionProvider"]).providers == [
        "CPUExecutionProvider"
    ]
    for bad in (["NoSuchExecutionProvider"], [], "CPUExecutionProvider"):
        with pytest.raises(InvalidInput, match="providers"):
            artifact.load(tiny_artifact, providers=bad)
    monkeypatch.setenv("TWIN_ORT_PROVIDERS", "NoSuchExecutionProvider")
    with pytest.raises(InvalidInput, match="NoSuchExecutionProvider"):
        artifact.load(tiny_artifact)
    monkeypatch.setenv("TWIN_ORT_PROVIDERS", "CPUExecutionProvider")
    twin = artifact.load(tiny_artifact).twin(artifact.load(tiny_artifact).data_keys[0])
    assert twin.predict(np.zeros((1, *twin.image_size), np.float32))[0].shape == (1, twin.n_neurons)


def test_a_batch_run_in_slices_gives_the_same_answers(tiny_behavior_artifact):
    """rows_per_run=2 runs 5 images as 2 + 2 + 1 calls: every output equals the one-call run, the members'
    (M, B, N) joined on their batch axis, and gradients too."""
    sliced = artifact.load(tiny_behavior_artifact, threads=2, rows_per_run=2).twin()
    whole = artifact.load(tiny_behavior_artifact, threads=2, rows_per_run=64).twin()
    assert sliced.rows_per_run == sliced.gradient_rows_per_run == 2 and whole.rows_per_run == 64
    rng = np.random.default_rng(3)
    images = _images(5, whole.recording_image_size)
    behavior = rng.uniform(0, 1, (5, 3)).astype(np.float32)
    pupil = rng.normal(0, 1, (5, 2)).astype(np.float32)
    weights = rng.standard_normal((5, whole.n_neurons)).astype(np.float32)
    expected = whole.predict(images, behavior, pupil)
    for a, b in zip(sliced.predict(images, behavior, pupil), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    members = sliced.predict_members(images, behavior, pupil)
    assert members.shape == (2, 5, whole.n_neurons)
    np.testing.assert_allclose(members, whole.predict_members(images, behavior, pupil), rtol=1e-6, atol=1e-7)
    assert not np.allclose(members[:, 0], members[:, 1])  # rows are not repeated across slices
    gradient = sliced.gradient(images, weights, behavior, pupil)
    assert gradient.shape == images.shape
    expected_gradient = whole.gradient(images, weights, behavior, pupil)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-8)


def test_rows_per_run_follows_the_readout_size_on_cpu_and_is_checked(tiny_artifact, monkeypatch):
    manifest = {"model": {"core": {"channels": 64}}}
    cpu, gpu = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # 8,000 neurons x 64 channels x 4 bytes = 2 MB per image: 4 images within 8 MiB
    assert artifact.default_rows_per_run(manifest, 8000, cpu) == 4
    assert artifact.default_rows_per_run(manifest, 1000, cpu) == 32
    assert artifact.default_rows_per_run(manifest, 150, cpu) == 128
    assert artifact.default_rows_per_run(manifest, 100, cpu) == artifact.MAX_ROWS_PER_RUN
    assert artifact.default_rows_per_run(manifest, 10**6, cpu) == 1
    assert artifact.default_rows_per_run({}, 8000, cpu) == 4  # 64 channels where the manifest is silent
    assert artifact.default_rows_per_run(manifest, 8000, gpu) is None  # a GPU takes batches whole
    # the gradient graph keeps its activations for the backward pass: fewer rows fill the cache
    assert artifact.default_rows_per_run(manifest, 1000, cpu, gradient=True) == 4
    assert artifact.default_rows_per_run(manifest, 8000, cpu, gradient=True) == 1
    assert artifact.default_rows_per_run(manifest, 8000, gpu, gradient=True) is None
    monkeypatch.delenv("TWIN_ORT_ROWS_PER_RUN", raising=False)
    twin = artifact.load(tiny_artifact).twin("90001-1-1")
    assert twin.rows_per_run == artifact.default_rows_per_run(twin.artifact.manifest, 150, cpu)
    assert twin.gradient_rows_per_run == max(1, twin.rows_per_run // artifact.GRADIENT_ROWS_DIVISOR)
    monkeypatch.setenv("TWIN_ORT_ROWS_PER_RUN", "3")
    set_by_env = artifact.load(tiny_artifact).twin("90001-1-1")
    assert set_by_env.rows_per_run == set_by_env.gradient_rows_per_run == 3  # both graphs
    assert artifact.load(tiny_artifact, rows_per_run=5).twin("90001-1-1").rows_per_run == 5  # argument first
    for bad in ("0", "many", "-2", "2.5", "\u00b2"):
        monkeypatch.setenv("TWIN_ORT_ROWS_PER_RUN", bad)
        with pytest.raises(InvalidInput, match="TWIN_ORT_ROWS_PER_RUN"):
            artifact.load(tiny_artifact)
    monkeypatch.delenv("TWIN_ORT_ROWS_PER_RUN")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidInput, match="rows_per_run"):
            artifact.load(tiny_artifact, rows_per_run=bad)
