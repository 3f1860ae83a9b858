"""A decoder tried once at start on a probe JPEG, the way chunks will use it.

nvJPEG can be importable and still fail (a torchvision built without it, a driver it cannot
use): each image would then go to Pillow one by one, quietly. A worker refuses to start instead.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from worker.core.errors import ConfigError
from worker.core.pixels import Preprocess
from worker.decoders import Decoder, Limits
from worker.decoders.pillow import decode_image

MAX_DIFFERENCE = 4.0  # mean levels from Pillow's pixels: a decoder may round otherwise, no more


def probe_jpeg() -> bytes:
    """A 320 x 240 baseline JPEG with smooth shading and edges."""
    y, x = np.mgrid[0:240, 0:320]
    pixels = np.stack([x * 255 // 319, y * 255 // 239, (x // 40 + y // 40) % 2 * 200], axis=-1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def check_decoder(decoder: Decoder, spec: Preprocess, limits: Limits) -> None:
    """Decode the probe through ``prepare`` and ``finish``; a ConfigError if it does not come
    back as pixels alike to Pillow's."""
    data = probe_jpeg()
    try:
        out = decoder.finish([decoder.prepare(data, spec, limits)], spec)[0]
    except Exception as exc:
        out = exc
    if not hasattr(out, "shape"):  # an error, or handed back to Pillow (OnCpu)
        raise ConfigError(f"TAGGER_DECODER={decoder.name} could not decode a probe JPEG "
                          f"({type(out).__name__}: {out}): repair its install, or set "
                          "TAGGER_DECODER=pillow")
    pixels = out.permute(1, 2, 0).cpu().numpy() if hasattr(out, "permute") else np.asarray(out)
    expected = decode_image(data, spec, limits)
    difference = (np.abs(pixels.astype(int) - expected.astype(int)).mean()
                  if pixels.shape == expected.shape else float("inf"))
    if difference > MAX_DIFFERENCE:
        raise ConfigError(f"TAGGER_DECODER={decoder.name} decoded a probe JPEG wrongly (shape "
                          f"{pixels.shape}, {difference:.1f} levels from Pillow's on average): "
                          "repair its install, or set TAGGER_DECODER=pillow")
