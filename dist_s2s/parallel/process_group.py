"""Joining the launcher's process group, and telling a lost peer from any other failure.

torchrun and the deepspeed launcher start one process per pipeline stage and replica and set
WORLD_SIZE, RANK, LOCAL_RANK and MASTER_ADDR / MASTER_PORT; DeepSpeed forms the group from them.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from datetime import timedelta
from typing import NoReturn

import torch

from dist_s2s.config import Config
from dist_s2s.errors import UserError
from dist_s2s.parallel import comm_log
from dist_s2s.parallel.deepspeed_hooks import import_deepspeed, without_shared_memory_op


def launched_as_ranks() -> bool:
    """Started by torchrun or the deepspeed launcher as one of several processes (they set WORLD_SIZE); one
    process under a launcher trains on its own, as a plain process does."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restart_attempt() -> int:
    """Which attempt of the job this is: 0 at first, n after torchrun restarted its workers n times."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def join_process_group(config: Config) -> None:
    """gloo on CPU, NCCL on GPUs (DeepSpeed's accelerator picks); every wait bounded by
    parallel.start_timeout_s until the ranks are set up (`bound_every_wait` then applies parallel.timeout_s).
    DeepSpeed's CPU shared-memory all-reduce is switched off (`deepspeed_hooks.without_shared_memory_op`).
    The first import of DeepSpeed in a rank: call it before importing the schedules."""
    check_world_size(config, int(os.environ["WORLD_SIZE"]))  # before joining: a wrong count would wait, not fail
    nccl_errors_raise()
    device = rank_device()
    comm_log.record_if_asked(str(device))
    deepspeed = import_deepspeed()  # first, so that it loads without its autotuner's MLflow import
    from deepspeed.utils import logger as deepspeed_logger

    without_shared_memory_op()
    deepspeed_logger.setLevel(logging.WARNING)
    timeout = timedelta(seconds=config.parallel.start_timeout_s)
    _init_default_group(device, timeout)
    deepspeed.init_distributed(timeout=timeout, verbose=False)  # takes the group formed here
    if torch.distributed.get_rank() != 0:  # one console: rank 0's
        logging.getLogger("dist_s2s").setLevel(logging.WARNING)


def _init_default_group(device: torch.device, timeout: timedelta) -> None:
    """The default process group, its keys in a namespace of this attempt's own.

    torchrun hands restarted workers the same store, still holding the first attempt's keys (each rank's
    address among them): a restarted rank read its peer's old address and failed with "Gloo connectFullMesh
    failed … Connection refused" (or waited on keys that were already there). Each attempt now starts from
    empty keys; DeepSpeed, finding the group formed, uses it as its own would be formed (on CUDA bound to the
    rank's GPU, as DeepSpeed binds it)."""
    from deepspeed.accelerator import get_accelerator

    store, rank, world_size = next(torch.distributed.rendezvous("env://", timeout=timeout))
    store = torch.distributed.PrefixStore(f"dist-s2s/attempt-{restart_attempt()}", store)
    bound = {"device_id": device} if device.type == "cuda" and world_size > 1 else {}
    torch.distributed.init_process_group(get_accelerator().communication_backend_name(), store=store, rank=rank,
                                         world_size=world_size, timeout=timeout, **bound)


def bound_every_wait(timeout: timedelta) -> None:
    """Every collective this rank waits in, on any group it belongs to (the default one, DeepSpeed's, the
    wavefront's pairs), fails after `timeout`: what parallel.timeout_s means once training has started.
    Groups keep the timeout they were formed with (parallel.start_timeout_s for ours, torch's 10 or 30
    minutes for DeepSpeed's) until told otherwise."""
    from torch.distributed import distributed_c10d

    for group in list(distributed_c10d._world.pg_map):
        if not distributed_c10d._rank_not_in_group(group):
            distributed_c10d._set_pg_timeout(timeout, group)


def leave_process_group(finished: bool) -> None:
    """Every rank leaves the same way, in the same order: after a finished run, a barrier (every rank's last messages
    are in: a rank that tore its groups down while a peer's last send was in flight aborted); then every group it is a
    member of destroyed on its own, in the order the groups were formed (the same on every rank: forming one is
    collective; NCCL's communicators are best torn down so), the default group last. After a failure there may be
    nobody left to meet: no barrier."""
    from torch.distributed import distributed_c10d

    if not torch.distributed.is_initialized():
        return
    if finished:
        torch.distributed.barrier()
    default = distributed_c10d._get_default_group()
    for group in [group for group in distributed_c10d._world.pg_map if group is not default]:  # in forming order
        torch.distributed.destroy_process_group(group)
    torch.distributed.destroy_process_group()


def end_rank_process(code: int) -> NoReturn:
    """End a launched rank's process once it has left its groups: exit handlers run, output flushed, then `os._exit`,
    without the interpreter's finalization and C++'s static destructors (issue 31, docs/robustness.md).

    Destroying a gloo group stops none of its threads (gloo's `shutdown` does nothing): they stop when the group's
    last Python reference dies, and DeepSpeed's engine (its grid, its p2p module, its hooks on the parameters) holds
    them to the end. Each rank of a 4-stage chain still runs 24–36 gloo threads after leaving, each with a socket to a
    peer. A normal exit tears them down during finalization and static destruction, in an order of its own on each
    rank, while the peers exit and close their sockets: a hang-up that wakes a thread whose objects are already
    destroyed aborts the process (SIGABRT), and the launcher reports a finished run as failed. `os._exit` ends every
    thread at once, with nothing torn down under them."""
    atexit._run_exitfuncs()  # what a normal exit runs first: the communication log, MLflow's, logging's flush
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said on it
            pass
    os._exit(code)


def rank_device() -> torch.device:
    """This rank's GPU (`LOCAL_RANK`), made the current device before the group forms: NCCL communicators,
    barriers and object collectives work on the current device, which is otherwise GPU 0 for every rank;
    the CPU without GPUs or under DS_ACCELERATOR=cpu."""
    if not torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR") == "cpu":
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def nccl_errors_raise() -> None:
    """A dead NCCL peer raises in Python, where the trainer turns it into the `rank R lost contact` line,
    instead of NCCL's watchdog tearing the process down: TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (CleanUpOnly:
    abort the communicator, keep the process). A value the user set wins."""
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")


def lost_contact(error: RuntimeError) -> bool:
    """A communication failure (peer gone, or silent past the timeout), as gloo and NCCL report it."""
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error).lower()  # gloo's "Timed out waiting …", a timed Work.wait's "Operation timed out!"
    return any(mark in text for mark in ("gloo", "nccl", "connection reset", "connection closed", "timed out"))


def check_world_size(config: Config, world_size: int) -> None:
    """Every process is one stage of one replica: the launcher must start exactly stages × data."""
    needed = config.parallel.stages * config.parallel.data
    if needed != world_size:
        raise UserError(f"parallel.stages × parallel.data = {config.parallel.stages} × {config.parallel.data} = "
                        f"{needed}, "
                        f"but {world_size} processes were launched (set --nproc_per_node / --num_gpus to {needed})")
