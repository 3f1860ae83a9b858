"""PyTorch eager Chinese CLIP: both towers through transformers, on the CPU or a CUDA device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, ChineseCLIPModel

from worker.backends.folder import read_preprocess
from worker.core.errors import ConfigError
from worker.core.pixels import Pixels
from worker.core.settings import Settings

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TEXT_LENGTH = 52  # the length Chinese CLIP was trained with


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def choose_precision(requested: str, device: torch.device) -> str:
    """CUDA -> fp16; CPU -> bf16 where the CPU has AMX tiles, else fp32 (fp16 is slow there).

    Measured on a 2-core avx512_bf16 Xeon without AMX (torch 2.13): the ViT-B/16 image tower ran
    6.1 images/s in fp32 and 4.1 in bf16; on an AVX2-only EPYC bf16 ran at 0.23x fp32.
    """
    if requested == "int8":
        raise ConfigError("TAGGER_PRECISION=int8 needs TAGGER_BACKEND=onnx (or auto)")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "float16"
    return "bfloat16" if cpu_has_amx() else "float32"


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("flags") and " amx_bf16" in line for line in cpuinfo)
    except OSError:  # not Linux: no way to tell, take the safe choice
        return False


def choose_batch_size(requested: int, device: torch.device) -> int:
    if requested:
        return requested
    if device.type != "cuda":
        return 16
    # ViT-B/16 in fp16 needs well under 20 MB of activations per image at inference.
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(16, min(512, free // (40 * 2**20))))


class TorchBackend:
    """Both towers in PyTorch eager mode; texts always in float32 (once per label set)."""

    name = "torch"
    text = None  # both towers its own

    @classmethod
    def auto_candidates(cls, device: str, precision: str) -> list[str]:
        """fp32 and fp16 on a GPU; on a CPU fp32, and bf16 only where it has AMX tiles."""
        if precision != "auto":
            return [] if precision == "int8" else [precision]
        if device == "cuda":
            return ["float32", "float16"]
        return ["float32", *(["bfloat16"] if cpu_has_amx() else [])]

    def __init__(self, settings: Settings, folder: Path, precision: str | None = None, *,
                 reference: object = None) -> None:
        self.torch_device = choose_device(settings.device)
        self.device = str(self.torch_device)
        self.precision = choose_precision(precision or settings.precision, self.torch_device)
        self.dtype = DTYPES[self.precision]
        self.batch_size = choose_batch_size(settings.batch_size, self.torch_device)
        # Loaded in float32; only the image tower runs in the chosen precision.
        self.model = ChineseCLIPModel.from_pretrained(folder, dtype=torch.float32,
                                                      local_files_only=True)
        self.model.vision_model.to(self.dtype)
        self.model.visual_projection.to(self.dtype)
        self.model.to(self.torch_device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.preprocess = read_preprocess(folder)
        self.logit_scale = float(self.model.logit_scale.detach().float().exp())
        self._mean = torch.tensor(self.preprocess.mean, device=self.torch_device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess.std, device=self.torch_device).view(1, 3, 1, 1)
        self.description = f"torch {self.precision} {self.device}"
        self.text_encoder = "torch float32"

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[Sequence[str]], batch: int = 256) -> np.ndarray:
        """One L2-normalised float32 row per label: the mean over its templates (GUIDE §1).

        In float32 whatever the image side runs in: computed once per label set, and the
        cache then serves every precision and runtime alike.
        """
        flat = [text for group in prompts for text in group]
        rows = []
        for start in range(0, len(flat), batch):
            tokens = self.tokenizer(flat[start:start + batch], padding=True, truncation=True,
                                    max_length=TEXT_LENGTH, return_tensors="pt")
            hidden = self.model.text_model(**tokens.to(self.torch_device)).last_hidden_state
            rows.append(_normalise(self.model.text_projection(hidden[:, 0])))
        per_template = torch.cat(rows).view(len(prompts), -1, rows[0].shape[-1])
        return _normalise(per_template.mean(dim=1)).cpu().numpy()

    @torch.inference_mode()
    def encode_images(self, pixels: Sequence[Pixels]) -> np.ndarray:
        """(H, W, 3) uint8 arrays or (3, H, W) uint8 tensors -> (B, D) normalised float32."""
        batch = self._to_device(pixels).float().div_(255).sub_(self._mean).div_(self._std)
        pooled = self.model.vision_model(pixel_values=batch.to(self.dtype)).pooler_output
        return _normalise(self.model.visual_projection(pooled).float()).cpu().numpy()

    def _to_device(self, pixels: Sequence[Pixels]) -> torch.Tensor:
        if isinstance(pixels[0], torch.Tensor):  # decoded on the GPU: already (3, H, W)
            return torch.stack(list(pixels)).to(self.torch_device)
        batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        if self.torch_device.type == "cuda":
            return batch.pin_memory().to(self.torch_device, non_blocking=True)
        return batch

    def drop_image_tower(self) -> None:
        """Free the image tower when this backend is kept only to encode texts."""
        self.model.vision_model = None
        self.model.visual_projection = None
        self.release_memory()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, torch.OutOfMemoryError)

    def release_memory(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def memory(self) -> tuple[int, int] | None:
        if self.torch_device.type != "cuda":
            return None
        return (torch.cuda.memory_allocated(self.torch_device),
                torch.cuda.max_memory_allocated(self.torch_device))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
