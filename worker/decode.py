"""Image bytes -> a model-sized RGB uint8 array: draft decode, EXIF orientation, mode, resize."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from worker.errors import ItemError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
RESIZE_FIRST = frozenset({"RGB", "RGBA", "L", "LA"})  # modes Pillow resizes as they are
# Shrink by an integer box reduction first while the remaining bicubic step is at least this
# large: several times faster on multi-megapixel sources, indistinguishable at the model's size.
REDUCING_GAP = 3.0

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning decodes the bomb anyway.
warnings.simplefilter("error", Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Preprocess:
    """How the checkpoint's image processor sizes its input (read from its config)."""

    height: int
    width: int
    resample: int = Image.Resampling.BICUBIC
    shortest_edge: int | None = None  # resize the short side to this, then centre-crop

    @property
    def draft_size(self) -> tuple[int, int]:
        side = self.shortest_edge or max(self.height, self.width)
        return side, side


def decode(data: bytes, spec: Preprocess, *, max_pixels: int, draft: bool = True) -> np.ndarray:
    """Decode ``data`` into an (height, width, 3) uint8 array, or raise ItemError."""
    if not data:
        raise ItemError("empty", "zero-byte file")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.UnidentifiedImageError as exc:
        raise ItemError("undecodable", f"not a {'/'.join(ALLOWED_FORMATS)} image") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ItemError("too-many-pixels", f"decompression bomb guard: {exc}") from exc
    except Exception as exc:  # a damaged header raises OSError, SyntaxError, struct.error, ...
        raise ItemError("undecodable", f"{type(exc).__name__}: {exc}") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ItemError("too-many-pixels",
                            f"{width}x{height} is over the limit of {max_pixels} pixels "
                            "(decompression bomb guard)")
        try:
            if draft and image.format == "JPEG":
                # DCT-domain downscale: decode at 1/2..1/8 size, still at least the model's size.
                image.draft("RGB", spec.draft_size)
            image = ImageOps.exif_transpose(image)
            if image.mode in RESIZE_FIRST:
                # Resize at the source's channel count, then compose: a 5K RGBA photo is
                # composed onto white at 224x224 instead of at full size (same result: Pillow
                # resizes with premultiplied alpha, and composing is linear).
                return np.asarray(to_rgb(resize(image, spec)))
            return np.asarray(resize(to_rgb(image), spec))
        except Exception as exc:  # Pillow raises many types for damaged data; all are per-item.
            raise ItemError("undecodable",
                            f"{image.format} image: {type(exc).__name__}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composed onto white, 16-bit scaled to 8-bit."""
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


def resize(image: Image.Image, spec: Preprocess) -> Image.Image:
    """Resize as the processor does: squash to (height, width), or short side then centre crop."""
    if spec.shortest_edge is None:
        return image.resize((spec.width, spec.height), resample=spec.resample,
                            reducing_gap=REDUCING_GAP)
    width, height = image.size
    scale = spec.shortest_edge / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, resample=spec.resample, reducing_gap=REDUCING_GAP)
    left = (size[0] - spec.width) // 2
    top = (size[1] - spec.height) // 2
    return image.crop((left, top, left + spec.width, top + spec.height))
