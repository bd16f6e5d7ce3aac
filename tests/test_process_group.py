"""Which failures mean a lost peer (`parallel.process_group.lost_contact`): the trainer then says how to resume."""

from __future__ import annotations

import pytest

from dist_s2s.parallel.process_group import lost_contact


@pytest.mark.parametrize("text", [
    "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 2000ms for recv "
    "operation to complete",  # a message from a peer that hangs
    "Operation timed out!",  # a timed Work.wait (the clipping all-reduce), a peer stopped mid-collective
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:29500",
    "Connection reset by peer",
    "NCCL communicator was aborted on rank 1.",
])
def test_what_gloo_nccl_and_a_timed_wait_say_of_a_lost_peer_is_lost_contact(text):
    assert lost_contact(RuntimeError(text))


@pytest.mark.parametrize("text", ["CUDA out of memory. Tried to allocate 2.00 GiB",
                                  "mat1 and mat2 shapes cannot be multiplied (128x1000 and 500x1000)"])
def test_any_other_failure_is_not(text):
    assert not lost_contact(RuntimeError(text))
