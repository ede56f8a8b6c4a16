"""Data-parallel training across a pod's GPUs: one process per GPU, started by torchrun.

The worker CLI starts torchrun itself (`launch`) when the train stage's config asks for more than one
process, so the operator and the local runner run the same `consistency-worker train` command for any GPU
count, and the stage's exit code (0 / 2 permanent / 75 retryable) survives: torchrun reports any failed
child as 1, which would turn a permanent error into retries. Rank 0 alone writes checkpoints, outputs,
the manifest and the result; the launcher hands rank 0's result on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_RANK, ENV_LOCAL_RANK, ENV_WORLD_SIZE = "RANK", "LOCAL_RANK", "WORLD_SIZE"


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        """Only one process writes to the store and reports the result."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """This process's place in a torchrun job (a single process outside torchrun)."""
    env = os.environ
    return World(rank=int(env.get(ENV_RANK, 0)), size=int(env.get(ENV_WORLD_SIZE, 1)),
                 local_rank=int(env.get(ENV_LOCAL_RANK, 0)))


def under_torchrun() -> bool:
    return ENV_WORLD_SIZE in os.environ and ENV_LOCAL_RANK in os.environ


def init_process_group(world: World, device_type: str) -> None:
    """NCCL between GPUs, gloo on CPU (the CPU test path); idempotent."""
    import torch.distributed as dist

    if world.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


@contextlib.contextmanager
def rank_zero_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads into a cache the ranks share), the others after it."""
    import torch.distributed as dist

    if world.distributed and world.rank != 0:
        dist.barrier()
    yield
    if world.distributed and world.rank == 0:
        dist.barrier()


def broadcast_parameters(params: list[Any], world: World) -> None:
    """Start every rank from rank 0's trainable weights (what DDP does at construction)."""
    import torch.distributed as dist

    if world.distributed:
        for p in params:
            dist.broadcast(p.data, src=0)


def all_reduce_gradients(params: list[Any], extras: list[float], world: World) -> list[float]:
    """Sum the trainable parameters' gradients (and a few scalars: loss, tokens) over all ranks in one
    flat all-reduce. Each rank weights its micro-batches by their share of the step's target tokens, so the
    sum is the per-token mean over the whole global batch; a rank without a micro-batch in a short last step
    contributes zeros (the reason for a hand-rolled reduction instead of DDP, whose hooks need a backward on
    every rank). LoRA's few parameters make one flat buffer cheap; bucketing would not pay."""
    import torch
    import torch.distributed as dist

    if not world.distributed:
        return extras
    device = params[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]
                     + [torch.tensor(extras, dtype=torch.float32, device=device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    return flat[offset:].tolist()


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, worker_args: list[str]) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m consistency_worker.cli ...` (via the interpreter, so a
    venv that is not activated works)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "-m", "consistency_worker.cli", *worker_args]


def rank_env(nproc: int) -> dict[str, str]:
    """The environment of the ranks: the pod's CPUs shared out, so N processes do not each start a thread
    pool the size of the whole pod (the CLI sized the pools for one process before this)."""
    from consistency_worker.runtime.pod_limits import THREAD_ENV

    env = dict(os.environ)
    for name in THREAD_ENV:
        if env.get(name, "").isdigit():
            env[name] = str(max(1, int(env[name]) // nproc))
    return env


def launch(nproc: int, worker_args: list[str]) -> tuple[int, str | None]:
    """Run the stage in `nproc` processes; returns (torchrun's exit code, rank 0's result JSON or None).

    SIGTERM (preemption) is forwarded to torchrun, which forwards it to the ranks: they checkpoint-exit
    as a single process would."""
    with tempfile.TemporaryDirectory(prefix="consistency-ddp-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = torchrun_command(nproc, [*worker_args, "--result-file", str(result_file)])
        log.info("data-parallel training in %d processes: %s", nproc, " ".join(command))
        proc = subprocess.Popen(command, env=rank_env(nproc))
        previous = signal.getsignal(signal.SIGTERM)

        def forward(signum: int, _frame: Any) -> None:
            proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        try:
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = result_file.read_text() if result_file.is_file() else None
        return code, text
