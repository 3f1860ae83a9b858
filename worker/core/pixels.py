"""What decoders produce and backends take: the model's input size and normalisation, and pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# An (H, W, 3) uint8 NumPy array from the CPU decoders, or a (3, H, W) uint8 tensor in GPU
# memory from nvJPEG: decoders and backends agree on it, the loop only passes it on.
Pixels = Any
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, without importing Pillow here


@dataclass(frozen=True)
class Preprocess:
    """How the checkpoint's image processor sizes and normalises its input (from its config)."""

    height: int
    width: int
    resample: int = BICUBIC
    shortest_edge: int | None = None  # resize the short side to this, then centre-crop
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def draft_size(self) -> tuple[int, int]:
        side = self.shortest_edge or max(self.height, self.width)
        return side, side
