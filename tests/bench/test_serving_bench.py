"""bench/serving.py --quick end to end: a tiny trained ensemble, exported, served over gRPC in a child
process, and every row of the results file filled with positive numbers. No timing is asserted.

Needs the train and serve extras (torch, onnxruntime, onnxscript, grpcio, prometheus-client); not the
`bench` extra (neuralpredictors is not used by this benchmark).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

for module in ("torch", "onnxruntime", "onnxscript", "grpc", "prometheus_client"):
    pytest.importorskip(module, reason=f"{module}: needs the train and serve extras")

ROOT = Path(__file__).resolve().parents[2]


def _positive(row: dict, *names: str) -> None:
    for name in names:
        assert row[name] > 0, (name, row)


@pytest.mark.slow
def test_quick_serving_bench_fills_every_row(tmp_path):
    out = tmp_path / "serving.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
        env={**os.environ, "TWIN_ORT_ROWS_PER_RUN": "16"},  # batches of 32 and 128 run in slices
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "targets:" in done.stdout and f"wrote {out}" in done.stdout
    result = json.loads(out.read_text())

    assert result["benchmark"] == "serving" and result["quick"] is True
    for field in ("cpu", "cores", "torch", "onnxruntime", "grpcio", "protobuf"):
        assert result["machine"][field]
    assert result["model"]["members"] == 2 and result["model"]["neurons"] == 100

    # 1. ONNX Runtime vs torch eager at batch 1, 32, 128, the same ensemble (same numbers); ONNX Runtime
    # in calls of 16 images vs whole batches in one call where a batch is larger.
    assert result["config"]["ort_rows_per_run"] == 16
    assert sorted(result["engines"], key=int) == ["1", "32", "128"]
    for batch, row in result["engines"].items():
        for engine in ("ort", "torch_channels_last", "torch_nchw"):
            _positive(row[engine], "images_per_second", "seconds_median", "calls")
        _positive(row["ort"], "speedup_vs_torch_best")
        assert row["max_relative_difference_vs_torch"] < 1e-4
        assert ("ort_one_call" in row) == (int(batch) > 16)
        if int(batch) > 16:
            _positive(row["ort_one_call"], "images_per_second", "calls")
            _positive(row["ort"], "speedup_vs_ort_one_call")
    assert "ONNX Runtime at 16 per call vs one call" in done.stdout

    # 2. gRPC vs in process at batch 1 and 32 with 1, 8 and 32 clients.
    assert sorted((r["batch"], r["clients"]) for r in result["grpc"]) == [
        (b, c) for b in (1, 32) for c in (1, 8, 32)
    ]
    for row in result["grpc"]:
        for side in ("grpc", "in_process"):
            _positive(row[side], "images_per_second", "latency_ms_p50", "latency_ms_p99", "requests")
            assert row[side]["latency_ms_p99"] >= row[side]["latency_ms_p50"]
        _positive(row, "grpc_vs_in_process")
        assert all(b["model_calls"] > 0 for b in row["grpc"]["server_batches"])

    # 3. Dynamic batching on vs off, 32 clients x batch 1: the off server ran one image per call.
    batching = result["batching"]
    for side in ("on", "off"):
        _positive(batching[side], "images_per_second", "latency_ms_p50", "latency_ms_p99")
        assert batching[side]["clients"] == 32 and batching[side]["batch"] == 1
    assert all(b["images_per_model_call"] == 1 for b in batching["off"]["server_batches"])
    _positive(batching, "on_vs_off")
    _positive(batching["model_time_ceiling"], "batch32_vs_batch1")

    # 4. Gradient through gRPC vs torch autograd (and in-process ORT), batch 1 and 32; same numbers.
    assert sorted(result["gradient"], key=int) == ["1", "32"]
    for batch, row in result["gradient"].items():
        for side in ("grpc", "torch", "ort_in_process"):
            _positive(row[side], "images_per_second", "seconds_median")
        _positive(row["grpc"], "speedup_vs_torch")
        assert ("ort_one_call" in row) == (int(batch) > 16)  # TWIN_ORT_ROWS_PER_RUN sets both graphs
        if int(batch) > 16:
            _positive(row["ort_in_process"], "speedup_vs_ort_one_call")
        assert row["max_relative_difference_grpc_vs_torch"] < 1e-3

    names = [t["name"] for t in result["targets"]]
    assert len(names) == 5 and all(t["value"] > 0 and isinstance(t["met"], bool) for t in result["targets"])


@pytest.mark.parametrize("option", ["--members", "--neurons", "--threads"])
def test_a_zero_count_is_refused_not_replaced_by_the_default(tmp_path, option):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving.py"), "--quick", option, "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and f"{option}: 0; expected >= 1" in done.stderr, done.stderr[-2000:]
