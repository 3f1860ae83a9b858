"""ONNX Runtime Chinese CLIP: the image tower in onnxruntime (float32/int8 CPU, float16 CUDA)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from worker.backends.onnx_export import INPUT, OUTPUT, ModelCache
from worker.backends.torch_clip import TorchBackend, choose_device
from worker.backends.weights import checkpoint_digest
from worker.core.errors import ConfigError
from worker.core.pixels import Pixels
from worker.core.settings import Settings

CUDA, TENSORRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


def choose_onnx_precision(requested: str, device: torch.device) -> str:
    """float32 or int8 on the CPU, float16 (or float32) through the CUDA provider."""
    precision = requested if requested != "auto" else (
        "float16" if device.type == "cuda" else "float32")
    have = ort.get_available_providers()
    if precision == "bfloat16":
        raise ConfigError("TAGGER_BACKEND=onnx runs float32 or int8 on the CPU and float16 on "
                          "CUDA; for bfloat16 set TAGGER_BACKEND=torch")
    if (precision == "float16" or device.type == "cuda") and CUDA not in have:
        raise ConfigError(f"TAGGER_BACKEND=onnx with TAGGER_PRECISION={precision} on "
                          f"{'a GPU' if device.type == 'cuda' else 'the CPU'} needs "
                          f"onnxruntime's {CUDA}, which this onnxruntime lacks (it has "
                          f"{', '.join(have)}): install onnxruntime-gpu, or use float32 or "
                          "int8 on the CPU (TAGGER_DEVICE=cpu)")
    if precision == "float16" and device.type != "cuda":
        raise ConfigError("TAGGER_BACKEND=onnx runs float16 on a CUDA device only, and this "
                          "worker's device is the CPU: set TAGGER_DEVICE=cuda, or float32/int8")
    if precision == "int8" and device.type != "cpu":
        raise ConfigError("TAGGER_PRECISION=int8 (onnx) runs on the CPU: set TAGGER_DEVICE=cpu")
    return precision


def providers(precision: str, device: torch.device, cache: ModelCache, batch_size: int
              ) -> list[Any]:
    """The execution providers, best first: TensorRT (float16) where installed, CUDA, CPU."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    index = device.index or 0
    # cuDNN's default (exhaustive) search benchmarks every algorithm again for each new batch
    # shape; the heuristic picks at once (the patch embedding is the tower's one convolution).
    chain: list[Any] = [(CUDA, {"device_id": index, "cudnn_conv_algo_search": "HEURISTIC"}),
                        "CPUExecutionProvider"]
    if precision == "float16" and TENSORRT in ort.get_available_providers():
        spec = cache.spec
        shape = f"{INPUT}:{{}}x{spec.height}x{spec.width}x3"
        # A dynamic batch needs a profile; engines are slow to build, so they are cached too.
        chain.insert(0, (TENSORRT, {
            "device_id": index, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache.folder / "tensorrt"),
            "trt_profile_min_shapes": shape.format(1),
            "trt_profile_opt_shapes": shape.format(batch_size),
            "trt_profile_max_shapes": shape.format(batch_size)}))
    return chain


def session_options(device: torch.device) -> ort.SessionOptions:
    """Threads that sleep when idle: spinning ones took ~2.5 ms of the model process's CPU per
    image; with CUDA doing the work, one thread feeds it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = (1 if device.type == "cuda"
                                    else torch.get_num_threads() or os.cpu_count() or 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its warnings are about graph details, not about us
    return options


def open_session(path: Path, options: ort.SessionOptions, chain: list[Any],
                 device: torch.device, locked: Callable[[], AbstractContextManager[None]]
                 ) -> ort.InferenceSession:
    """The session on ``chain``; under ``locked`` where TensorRT builds its engine cache (K
    processes starting together would build it at once, and may read a half-written file).
    A GPU worker whose CUDA provider did not load is refused: onnxruntime quietly runs on the
    CPU then, while results would say cuda."""
    names = [entry[0] if isinstance(entry, tuple) else entry for entry in chain]
    with locked() if TENSORRT in names else contextlib.nullcontext():
        session = ort.InferenceSession(str(path), options, providers=chain)
    used = session.get_providers()
    if device.type == "cuda" and CUDA not in used:
        raise ConfigError(f"onnxruntime could not start its {CUDA} on {device} (it would run "
                          f"on {', '.join(used)}): install the onnxruntime-gpu build for this "
                          "CUDA, or set TAGGER_BACKEND=torch")
    return session


def settle(device: torch.device) -> Callable[[], None]:
    """What makes torch's queued kernels finish before onnxruntime reads their output: its CUDA
    stream does not wait for torch's (and torch's default stream, 0, cannot be handed to it)."""
    if device.type != "cuda":
        return lambda: None
    return torch.cuda.current_stream(device).synchronize


def run_bound(session: ort.InferenceSession, batch: torch.Tensor, ready: Callable[[], None]
              ) -> np.ndarray:
    """Run on a (B, H, W, 3) uint8 tensor's memory, no copy through the host; ``ready``: wait
    until the kernels that wrote it have run."""
    binding = session.io_binding()
    binding.bind_input(INPUT, batch.device.type, batch.device.index or 0, np.uint8,
                       list(batch.shape), batch.data_ptr())
    binding.bind_output(OUTPUT)
    ready()
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]  # type: ignore[no-any-return]


class OnnxBackend:
    """The image tower in ONNX Runtime; texts through a float32 TorchBackend (shared cache).

    ``reference``: a float32 TorchBackend already loaded (``auto`` measures both, one model).
    """

    name = "onnx"

    @classmethod
    def auto_candidates(cls, device: str, precision: str) -> list[str]:
        """fp32 and int8 on a CPU; fp16 (or fp32 when asked) where the CUDA provider is."""
        if device == "cuda":
            if CUDA not in ort.get_available_providers():
                return []
            offered = {"auto": ["float16"], "float16": ["float16"], "float32": ["float32"]}
        else:
            offered = {"auto": ["float32", "int8"], "float32": ["float32"], "int8": ["int8"]}
        return offered.get(precision, [])

    def __init__(self, settings: Settings, folder: Path, precision: str | None = None, *,
                 reference: TorchBackend | None = None) -> None:
        self.torch_device = choose_device(settings.device)
        self.device = str(self.torch_device)
        self.precision = choose_onnx_precision(precision or settings.precision,
                                               self.torch_device)
        self.folder = folder
        self.text = reference or TorchBackend(settings, folder, "float32")
        self.preprocess = self.text.preprocess
        self.batch_size = self.text.batch_size
        self.logit_scale = self.text.logit_scale
        self.text_encoder = self.text.text_encoder  # "torch float32": texts cached once for all
        # Checked against this float32 torch model, before it drops its image tower below.
        self.cache = ModelCache(settings.cache_dir / "onnx",
                                checkpoint_digest(folder, settings.cache_dir).digest,
                                self._torch_model, self.preprocess, self.text.encode_images)
        chain = providers(self.precision, self.torch_device, self.cache, self.batch_size)
        self.session = open_session(self.cache.get(self.precision),
                                    session_options(self.torch_device), chain,
                                    self.torch_device, self.cache.locked)
        if reference is None:
            self.text.drop_image_tower()
        used = self.session.get_providers()
        extra = ", TensorRT" if TENSORRT in used else ""
        self.description = (f"onnx {self.precision} {self.device} "
                            f"(onnxruntime {ort.__version__}{extra})")
        self._ready = settle(self.torch_device)
        self._peak = 0

    def _torch_model(self) -> Any:
        """The float32 model on the CPU to export from: the text side's own where it is one."""
        text = self.text
        if (text.torch_device.type == "cpu" and text.precision == "float32"
                and text.model.vision_model is not None):
            return text.model
        from transformers import ChineseCLIPModel

        return ChineseCLIPModel.from_pretrained(self.folder, dtype=torch.float32,
                                                local_files_only=True).eval()

    def encode_texts(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        return self.text.encode_texts(prompts)

    def drop_image_tower(self) -> None:
        """Nothing to free: no backend shares this one's text tower (a torch model's)."""

    def encode_images(self, pixels: Sequence[Pixels]) -> np.ndarray:
        """(H, W, 3) uint8 arrays or (3, H, W) uint8 tensors -> (B, D) normalised float32."""
        if isinstance(pixels[0], torch.Tensor):
            out = self._run_tensors(pixels)
        else:
            out = self.session.run([OUTPUT], {INPUT: np.stack(pixels)})[0]
        out = np.asarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=-1, keepdims=True)  # type: ignore[no-any-return]

    def _run_tensors(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        # Decoded on the GPU: hand the runtime the tensor's memory, no copy through the host.
        batch = torch.stack(list(pixels)).permute(0, 2, 3, 1).contiguous()
        if self.torch_device.type == "cpu":
            batch = batch.cpu()
        return run_bound(self.session, batch, self._ready)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        if isinstance(exc, MemoryError | torch.OutOfMemoryError):
            return True
        message = str(exc)  # onnxruntime raises one exception type for all of its failures
        return "Failed to allocate memory" in message or "out of memory" in message.lower()

    def release_memory(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def memory(self) -> tuple[int, int] | None:
        """Device-wide bytes in use (onnxruntime's arena is invisible to torch's counters)."""
        if self.torch_device.type != "cuda":
            return None
        free, total = torch.cuda.mem_get_info(self.torch_device)
        self._peak = max(self._peak, total - free)
        return total - free, self._peak
