"""The only torch/transformers import: load Chinese CLIP once, encode labels, score batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoTokenizer, ChineseCLIPModel

from worker.decode import Preprocess

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TEXT_LENGTH = 52  # the length Chinese CLIP was trained with


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    """CUDA -> fp16; CPU -> bf16 where the CPU has AMX tiles, else fp32 (fp16 is slow there).

    Measured on a 2-core avx512_bf16 Xeon without AMX (torch 2.13): the ViT-B/16 image tower ran
    6.1 images/s in fp32 and 4.1 in bf16; oneDNN's avx512_bf16 matmul is slower than MKL's fp32.
    """
    if requested != "auto":
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if _cpu_has_amx() else torch.float32


def _cpu_has_amx() -> bool:
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


@dataclass
class Scores:
    """Top-k label indices and softmax scores for one image."""

    indices: list[int]
    scores: list[float]


class Scorer:
    """A loaded Chinese CLIP checkpoint: text side on demand, image side per batch."""

    def __init__(self, name: str, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 0) -> None:
        self.name = name
        self.device = choose_device(device)
        self.dtype = choose_dtype(dtype, self.device)
        self.batch_size = choose_batch_size(batch_size, self.device)
        self.model = ChineseCLIPModel.from_pretrained(name, dtype=self.dtype).to(self.device)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(name)
        processor = AutoImageProcessor.from_pretrained(name)
        self.preprocess, mean, std = preprocess_spec(processor)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.logit_scale = float(self.model.logit_scale.detach().float().exp())

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[Sequence[str]], batch: int = 256) -> np.ndarray:
        """One L2-normalised float32 row per label: the mean over its templates (GUIDE §1)."""
        flat = [text for group in prompts for text in group]
        rows = []
        for start in range(0, len(flat), batch):
            tokens = self.tokenizer(flat[start:start + batch], padding=True, truncation=True,
                                    max_length=TEXT_LENGTH, return_tensors="pt").to(self.device)
            hidden = self.model.text_model(**tokens).last_hidden_state[:, 0]
            rows.append(_normalise(self.model.text_projection(hidden).float()))
        per_template = torch.cat(rows).view(len(prompts), -1, rows[0].shape[-1])
        return _normalise(per_template.mean(dim=1)).cpu().numpy()

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, D) L2-normalised float32 embeddings."""
        batch = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float().div_(255).sub_(self._mean).div_(self._std)
        pooled = self.model.vision_model(pixel_values=batch.to(self.dtype)).pooler_output
        return _normalise(self.model.visual_projection(pooled).float())

    def score(self, images: torch.Tensor, texts: torch.Tensor, top_k: int) -> list[Scores]:
        """Softmax over the whole label set, then the k best labels per image."""
        probs = (self.logit_scale * images @ texts.T).softmax(dim=-1)
        values, indices = probs.topk(min(top_k, texts.shape[0]), dim=-1)
        return [Scores(i.tolist(), v.tolist()) for i, v in zip(indices.cpu(), values.cpu(),
                                                              strict=True)]

    def to_device(self, embeddings: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(embeddings).to(self.device)

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        return isinstance(exc, torch.OutOfMemoryError)

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def gpu_memory(self) -> tuple[int, int] | None:
        """Bytes held by tensors now and at the peak so far, on CUDA; None elsewhere."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.memory_allocated(self.device), torch.cuda.max_memory_allocated(
            self.device)


def preprocess_spec(processor: object) -> tuple[Preprocess, list[float], list[float]]:
    """Read size, crop, resampling and normalisation from the checkpoint's processor config."""
    config = processor.to_dict()  # type: ignore[attr-defined]
    size = config.get("size") or {}
    resample = int(config.get("resample", 3))
    if "shortest_edge" in size:
        crop = config.get("crop_size") or {}
        edge = int(size["shortest_edge"])
        spec = Preprocess(height=int(crop.get("height", edge)), width=int(crop.get("width", edge)),
                          resample=resample, shortest_edge=edge)
    else:
        spec = Preprocess(height=int(size["height"]), width=int(size["width"]), resample=resample)
    return spec, list(config["image_mean"]), list(config["image_std"])


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
