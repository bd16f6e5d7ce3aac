"""A host whose torch sees a GPU but which has no CUDA toolkit (no nvcc, no CUDA_HOME), for DeepSpeed's build:
with this folder first on PYTHONPATH and FAKE_VISIBLE_GPU=1, this CPU torch answers as a CUDA 13 build on one
Hopper GPU to what DeepSpeed's setup.py asks (tests/test_gpu_kit.py)."""

import os

if os.environ.get("FAKE_VISIBLE_GPU"):
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.is_bf16_supported = lambda *args, **kwargs: True
    torch.cuda.nccl.version = lambda: (2, 29, 7)
    torch.version.cuda = "13.0"
