"""Timing a rank's instructions for a timeline without making the host wait for the device.

A GPU's host runs ahead of the kernels it queues, so host time measures launches, not work. Waiting for
the whole device around each instruction (a device-wide synchronize) deadlocks the wavefront: the first
instruction of a step posts every receive, gradients that arrive only after this rank's own later sends
among them, and a synchronize waits for those receives too. CUDA events recorded on the compute stream time
the work instead: a receive's wait is a gap on that stream between two events, and the events are read once
the step's last instruction has been queued (waiting for that stream alone, whose work needs nothing more
from this host).
"""

from __future__ import annotations

import time

import torch


class HostClock:
    """On a CPU the host does the work: its own clock times it."""

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start

    def settle(self, last: float) -> None:
        """Nothing to wait for."""


class StreamClock:
    """On a GPU: an event on the current (compute) stream at each mark."""

    def __init__(self, device: torch.device):
        self.device = device

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end) / 1000

    def settle(self, last: torch.cuda.Event) -> None:
        """Wait until the compute stream has passed `last`: every earlier mark can then be read."""
        last.synchronize()


def instruction_clock(device: torch.device) -> HostClock | StreamClock:
    return StreamClock(device) if device.type == "cuda" else HostClock()
