"""ONNX Runtime sessions for a GPU worker, checked on this CPU-only build of onnxruntime.

A real session on a one-node model (uint8 pixels in, float32 out, the tower's input and output
names): the provider chain a GPU worker asks for, the checks on what onnxruntime really loaded,
the order of torch's stream wait and the run, and threads that do not spin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from worker.backends.onnx_clip import (
    CUDA,
    TENSORRT,
    open_session,
    providers,
    run_bound,
    session_options,
)
from worker.backends.onnx_export import INPUT, OUTPUT
from worker.core.errors import ConfigError

GPU = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Cast", [INPUT], [OUTPUT], to=TensorProto.FLOAT)], "cast",
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["B", 4, 4, 3])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["B", 4, 4, 3])])
    path = tmp_path / "cast.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.events.append("lock")
        yield
        self.events.append("unlock")


def test_a_gpu_session_whose_cuda_provider_did_not_load_is_refused(model: Path):
    chain = providers("float16", GPU, None, 8)  # type: ignore[arg-type]  # no TensorRT here
    assert CUDA not in ort.get_available_providers()  # it falls back to the CPU, quietly
    with pytest.raises(ConfigError, match="could not start its CUDAExecutionProvider"):
        open_session(model, session_options(GPU), chain, GPU, Recorder().locked)


def test_the_cuda_provider_picks_convolutions_by_heuristic():
    name, options = providers("float16", GPU, None, 8)[0]  # type: ignore[arg-type]
    assert name == CUDA and options["cudnn_conv_algo_search"] == "HEURISTIC"


def test_tensorrt_engines_are_built_under_the_cache_lock(model: Path):
    recorder = Recorder()
    chain = [(TENSORRT, {"trt_engine_cache_enable": True}), "CPUExecutionProvider"]
    session = open_session(model, session_options(CPU), chain, CPU, recorder.locked)
    assert recorder.events == ["lock", "unlock"]
    assert session.get_providers() == ["CPUExecutionProvider"]
    plain = Recorder()
    open_session(model, session_options(CPU), ["CPUExecutionProvider"], CPU, plain.locked)
    assert plain.events == []  # no engine to build: no wait on other processes


@pytest.mark.parametrize("device", [GPU, CPU])
def test_runtime_threads_sleep_when_idle(device: torch.device):
    options = session_options(device)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    if device.type == "cuda":
        assert options.intra_op_num_threads == 1


def test_torchs_kernels_finish_before_the_runtime_reads_the_batch(model: Path):
    events: list[str] = []

    class Recording(ort.InferenceSession):
        def run_with_iobinding(self, binding, run_options=None):  # type: ignore[no-untyped-def]
            events.append("run")
            return super().run_with_iobinding(binding, run_options)

    session = Recording(str(model), session_options(CPU), providers=["CPUExecutionProvider"])
    batch = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).view(2, 4, 4, 3)
    out = run_bound(session, batch, lambda: events.append("ready"))
    assert events == ["ready", "run"]
    assert np.array_equal(out, batch.numpy().astype(np.float32))
