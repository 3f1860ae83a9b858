"""Start-up choices of a model process that depend on its device."""

from __future__ import annotations

import torch

from worker.service.startup import GPU_MODEL_THREADS, limit_threads


def test_a_model_on_a_gpu_keeps_few_cpu_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        limit_threads("cpu")
        assert torch.get_num_threads() == 8  # the model runs on them
        limit_threads("cuda:0")
        assert torch.get_num_threads() == GPU_MODEL_THREADS
    finally:
        torch.set_num_threads(before)
