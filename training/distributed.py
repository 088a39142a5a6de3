"""Running members in parallel processes under torchrun (one node or several).

    torchrun --nproc-per-node=K -m training --data DIR --members M --out RUN     # one machine
    twin train --nproc K ...                                                     # the same, launched for you
    torchrun --nnodes=N --node-rank=R --nproc-per-node=K \\
             --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT -m training ...       # several machines

Every process loads the data, trains members rank, rank + world, ... into the shared run directory
(on a file system every node sees), and waits at a barrier; rank 0 then selects and scores the ensemble.
CPU processes use gloo and split the cores. GPU processes spread over the node's GPUs round robin: NCCL
with one GPU per rank, gloo when ranks share a GPU (more members than GPUs: small models leave one idle).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import torch

from twin.errors import InvalidInput, TwinError

__all__ = ["gpu_placement", "init_from_env", "is_rank_zero", "launch", "run_launcher", "shutdown"]


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes in the environment; returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or torch.distributed.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device.startswith("cuda"):
        device, backend = gpu_placement(device, local_rank, local_world, torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        backend = "gloo"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    # Members can train for hours; the barrier after them must not time out.
    torch.distributed.init_process_group(backend, timeout=dt.timedelta(hours=48))
    return device


def gpu_placement(device: str, local_rank: int, local_world: int, gpus: int) -> tuple[str, str]:
    """(this rank's device, process-group backend) for `device` ('cuda' or 'cuda:<i>') on a node.

    `cuda` spreads the node's ranks over its GPUs round robin, so that more members than GPUs train
    at once (small models leave a large GPU mostly idle). NCCL needs one GPU per rank; when ranks share
    a GPU the group uses gloo, which is enough: ranks only meet at the barrier after training.
    """
    if gpus < 1:
        raise InvalidInput(f"device: {device!r}, but no CUDA device is visible to torch")
    if device == "cuda":
        device = f"cuda:{local_rank % gpus}"
        shared = local_world > gpus
    else:
        shared = local_world > 1  # every rank on the one GPU named
    return device, "gloo" if shared else "nccl"


def is_rank_zero() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_launcher(args: Sequence[str]) -> int:
    """Run a launcher (torchrun) to its end; SIGINT and SIGTERM sent to this process are passed on.

    torchrun starts its workers in sessions of their own and stops them when it is signalled; killed
    outright (as subprocess.call does on an interrupt) it would leave them training. So the launcher
    runs in its own session too (a terminal's Ctrl-C reaches it once, through us), every signal is
    forwarded, and we wait for it to finish stopping its workers. Returns its exit status.

    torchrun can still leave a worker behind: one was seen, interrupted early in a run, asleep with no
    parent and no peers, holding its parent's stderr open. On Linux this process is therefore the
    workers' subreaper while the launcher runs (orphans become our children, not init's), and any that
    outlive the launcher are stopped: SIGTERM, then SIGKILL 10 s later.
    """
    was_subreaper = _set_child_subreaper(True)
    before = _children()
    process = subprocess.Popen(list(args), start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.poll() is None:  # left by an error of ours, not by a signal: nothing may train on
            process.kill()
            process.wait()
        if was_subreaper is not None:
            _stop_orphans(before)
            _set_child_subreaper(was_subreaper)  # as it was: a subreaper of its own stays one


_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


def _set_child_subreaper(on: bool) -> bool | None:
    """prctl(PR_SET_CHILD_SUBREAPER, on): the setting it had before, or None where it cannot be set
    (not Linux, or refused)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        before = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0) != 0:
            return None
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            return None
        return bool(before.value)
    except (OSError, AttributeError):
        return None


def _children() -> set[int]:
    """Process ids whose parent is this process (Linux /proc; empty elsewhere)."""
    me, found = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and int(fields[1]) == me:
            found.add(int(name))
    return found


def _stop_orphans(keep: set[int], grace: float = 10.0) -> None:
    """SIGTERM every child of ours not in `keep` (orphans we reaped as subreaper), SIGKILL those left
    after `grace` seconds, and collect them all (no zombies)."""
    orphans = _children() - keep
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while orphans:
        for pid in list(orphans):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                orphans.discard(pid)
        if orphans and time.monotonic() > deadline:
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        if orphans:
            time.sleep(0.05)


def launch(nproc: int, **options: object) -> None:
    """Run `python -m training` under torchrun on this machine, one process per member slot.

    options: `twin train`'s, by name (data: a list of paths; amp, channels_last, resume: booleans; None
    leaves an option out). Raises TwinError when the training processes fail.
    """
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    args += ["-m", "training"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "data":
            for path in value:  # type: ignore[attr-defined]
                args += [flag, str(path)]
        elif name in ("amp", "channels_last"):
            args.append(flag if value else flag.replace("--", "--no-", 1))
        elif value is None:
            continue
        elif name == "resume":
            args += [flag] if value else []
        else:
            args += [flag, str(value)]
    args.append("--quiet")
    code = run_launcher(args)
    if code != 0:
        raise TwinError(f"training processes failed (exit status {code}); see the messages above")
