"""Benchmark: the simulated mouse at benchmark scale, and loading what it wrote.

1. `twin simulate --preset sensorium` in a subprocess: wall time and peak resident memory (target: under
   10 minutes and a few GB on 2 cores).
2. Loading one recording of it (6,000 trials, ~8,000 neurons, 144x256 images): `twin.data.load_recording`
   cold (building the cache) and warm (memory-mapped), against a baseline in the same run: the naive
   reader that `np.load`s every per-trial file and stacks them.

Usage: python bench/simulate.py [--preset sensorium] [--out DIR] [--keep]
Prints a table and writes bench/results/simulate-<preset>-<machine>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from twin.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def device_info(device: str) -> dict:
    """The torch build, the vector kernels its CPU ops use and, on CUDA, the GPU a benchmark ran on.

    cpu_capability (AVX2, AVX512, ...): float sums round differently under each, so one seed's training
    follows another path on another CPU kind (bit-equal only on the same kind)."""
    import torch

    info = {
        "device": device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def positive_or(parser: argparse.ArgumentParser, option: str, value: int | None, default):
    """An integer option's value, or `default` when it was not given; below 1 it is refused, named
    (not silently replaced by the default, as `value or default` would)."""
    if value is None:
        return default
    if value < 1:
        parser.error(f"{option}: {value}; expected >= 1")
    return value


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (`kill`, `timeout`, a scheduler stopping the job) unwind like Ctrl-C: `finally`
    blocks and atexit handlers run, so a benchmark stops its child processes and removes its temporary
    folder instead of leaving them behind. For a script's main thread (call it before `main()`)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gb, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def naive_load(folder: Path) -> dict[str, np.ndarray]:
    """The baseline: one np.load per trial file, as a hand-written loop over the layout does it."""
    n = len(np.load(folder / "meta" / "trials" / "tiers.npy"))
    return {
        variable: np.stack([np.load(folder / "data" / variable / f"{i}.npy") for i in range(n)])
        for variable in ("images", "responses", "behavior", "pupil_center")
    }


def drop_page_cache() -> bool:
    """Best effort (needs root); cold numbers are only truly cold when this succeeds."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(preset: str, out: Path, cache: Path) -> None:
    """Simulate `preset` into `out` (caches in `cache`), time loading one recording, write the result."""
    env = {**os.environ, "TWIN_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "twin.cli", "simulate", "--preset", preset, "--out", str(out), "--force"],
        check=True,
        env=env,
    )
    simulate_s = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB -> GiB on Linux
    disk_gib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**30

    os.environ["TWIN_CACHE_DIR"] = str(cache)
    from twin.data import load_recording

    folder = sorted(out.glob("static*"))[-1]  # a pre-training recording (all responses released)
    dropped = drop_page_cache()
    start = time.perf_counter()
    naive = naive_load(folder)
    naive_s = time.perf_counter() - start
    drop_page_cache()
    start = time.perf_counter()
    rec = load_recording(folder, progress=False)
    np.asarray(rec.responses).sum()
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    rec = load_recording(folder, progress=False)
    np.asarray(rec.responses).sum()
    warm_s = time.perf_counter() - start
    assert np.array_equal(naive["responses"], rec.responses)

    result = {
        "benchmark": "simulate",
        "preset": preset,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "simulate_seconds": round(simulate_s, 1),
        "simulate_peak_rss_gib": round(peak_gib, 2),
        "disk_gib": round(disk_gib, 2),
        "load": {
            "recording": folder.name,
            "trials": rec.n_trials,
            "neurons": rec.n_neurons,
            "image_shape": list(rec.image_shape),
            "page_cache_dropped": dropped,
            "naive_np_load_seconds": round(naive_s, 2),
            "cold_seconds": round(cold_s, 2),
            "warm_seconds": round(warm_s, 3),
            "cold_speedup_vs_naive": round(naive_s / cold_s, 2),
            "warm_speedup_vs_naive": round(naive_s / warm_s, 1),
        },
    }
    print(
        f"\nsimulate --preset {preset}: {simulate_s:.0f} s, peak RSS {peak_gib:.2f} GiB, "
        f"{disk_gib:.1f} GiB on disk"
    )
    load = result["load"]
    height, width = rec.image_shape
    print(f"load {rec.n_trials} trials x {rec.n_neurons} neurons ({height}x{width}):")
    print(f"  naive np.load per file  {naive_s:8.2f} s   1.0x")
    print(f"  load_recording, cold    {cold_s:8.2f} s   {load['cold_speedup_vs_naive']}x")
    print(f"  load_recording, warm    {warm_s:8.3f} s   {load['warm_speedup_vs_naive']}x")
    tag = f"{os.cpu_count()}cpu"
    path = RESULTS / f"simulate-{preset}-{tag}.json"
    write_json(path, result)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sensorium")
    parser.add_argument("--out", type=Path, default=None, help="where to simulate (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the simulated data")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="twin-bench-")) / args.preset
    cache = Path(tempfile.mkdtemp(prefix="twin-bench-cache-"))
    try:  # the cache and an unkept simulation (GBs) are removed also when stopped or failed
        measure(args.preset, out, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not args.keep and args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    interrupt_on_sigterm()
    main()
