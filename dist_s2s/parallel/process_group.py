"""Joining the launcher's process group, and telling a lost peer from any other failure.

torchrun and the deepspeed launcher start one process per pipeline stage and replica and set
WORLD_SIZE, RANK, LOCAL_RANK and MASTER_ADDR / MASTER_PORT; DeepSpeed forms the group from them.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch

from dist_s2s.config import Config
from dist_s2s.errors import UserError
from dist_s2s.parallel import comm_log
from dist_s2s.parallel.deepspeed_hooks import without_shared_memory_op


def launched_as_ranks() -> bool:
    """Started by torchrun or the deepspeed launcher (they set WORLD_SIZE), not as a plain process."""
    return "WORLD_SIZE" in os.environ


def join_process_group(config: Config) -> None:
    """gloo on CPU, NCCL on GPUs (DeepSpeed's accelerator picks); every wait bounded by parallel.timeout_s.
    DeepSpeed's CPU shared-memory all-reduce is switched off (`deepspeed_hooks.without_shared_memory_op`)."""
    check_world_size(config, int(os.environ["WORLD_SIZE"]))  # before joining: a wrong count would wait, not fail
    nccl_errors_raise()
    device = rank_device()
    comm_log.record_if_asked(str(device))
    import deepspeed
    from deepspeed.utils import logger as deepspeed_logger

    without_shared_memory_op()
    deepspeed_logger.setLevel(logging.WARNING)
    deepspeed.init_distributed(timeout=timedelta(seconds=config.parallel.timeout_s), verbose=False)
    if torch.distributed.get_rank() != 0:  # one console: rank 0's
        logging.getLogger("dist_s2s").setLevel(logging.WARNING)


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
    text = str(error)
    return any(mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out"))


def check_world_size(config: Config, world_size: int) -> None:
    """Every process is one stage of one replica: the launcher must start exactly stages × data."""
    needed = config.parallel.stages * config.parallel.data
    if needed != world_size:
        raise UserError(f"parallel.stages × parallel.data = {config.parallel.stages} × {config.parallel.data} = "
                        f"{needed}, "
                        f"but {world_size} processes were launched (set --nproc_per_node / --num_gpus to {needed})")
