"""Which torch device a command runs on (one decision, shared by training, decoding and benchmarks), and how a
host tensor gets there."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import torch

from dist_s2s.errors import UserError


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; anything else is a torch device string. A host whose
    driver lists GPUs that this torch cannot see is an error, not a CPU run (a torch built for a newer CUDA than
    the driver's, or a CPU build)."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    listed = gpus_listed_by_driver()
    if listed:
        raise UserError(f"train.device=auto: nvidia-smi lists {len(listed)} GPU(s) (driver {driver_version()}), but "
                        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU build'}) sees none: run "
                        f"`bash scripts/setup.sh` again to install the torch build this driver runs "
                        f"(docs/platform.md), or set --train.device=cpu to train on the CPU")
    return torch.device("cpu")


def gpus_listed_by_driver() -> list[str]:
    """The `GPU i: ...` lines of `nvidia-smi -L` (none without the driver's tool, or where it fails)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in listing.splitlines() if line.startswith("GPU ")]


def driver_version() -> str:
    """The NVIDIA driver's version and the newest CUDA it runs, as nvidia-smi says them."""
    try:
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    driver = next((part.split(":")[1].split()[0] for part in header.split("  ") if "Driver Version:" in part), "?")
    cuda = next((part.split(":")[1].split()[0] for part in header.split("  ") if "CUDA Version:" in part), "?")
    return f"{driver}, CUDA {cuda}"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without the host waiting: a GPU copy from pinned memory is asynchronous,
    one from pageable memory waits for the device's queue first (on a CPU, the tensor itself). A tensor already
    on a GPU is moved as it is (only host memory can be pinned)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


_synchronize_observers: list[Callable[[torch.device], None]] = []


def synchronize(device: torch.device) -> None:
    """The host waits for everything queued on `device`, communication included: NCCL's receives wait for their
    sends, so a synchronize while a receive is posted whose send depends on this host going on never returns.
    Every synchronize of the package goes through here, and its observers (`comm_log`, which the NCCL-rules replay
    reads) hear of each, on a CPU run too, where nothing is waited for."""
    for observe in _synchronize_observers:
        observe(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def observe_synchronizes(observer: Callable[[torch.device], None]) -> None:
    _synchronize_observers.append(observer)
