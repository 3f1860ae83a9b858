"""Any Pillow mode to 8-bit RGB: transparency composed onto white, 16-bit scaled to 8-bit."""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_FIRST = frozenset({"RGB", "RGBA", "L", "LA"})  # modes Pillow resizes as they are


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB (itself if it is already)."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        array = np.asarray(image, dtype=np.uint32)
        shift = 8 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 0
        return Image.fromarray((array >> shift).clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return Image.fromarray(array.clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (
            image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
