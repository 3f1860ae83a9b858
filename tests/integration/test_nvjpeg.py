"""The nvJPEG decoder's logic on the CPU: routing, fallback, EXIF, resize (no GPU here).

torchvision's decode_jpeg cannot be installed beside this machine's CPU torch, so the GPU call is
replaced by a stand-in with its contract (a list of 1-D uint8 CPU tensors in, (C, H, W) uint8
tensors out, RuntimeError and no partial result on a bad one); everything around it is real.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from testkit.images import image_bytes, png_bomb, save
from testkit.imports import heavy_imports
from worker.core.errors import ConfigError, ItemError, Reason
from worker.core.pixels import Preprocess
from worker.core.settings import load_settings
from worker.decoders import Limits, OnCpu
from worker.decoders.nvjpeg import NvJpegDecoder, orient, resize, resize_all
from worker.decoders.pillow import decode_image

SPEC = Preprocess(height=32, width=32)
LIMITS = Limits.from_settings(load_settings({}))


class StandIn:
    """decode_jpeg's contract, decoding with Pillow; records what it was given."""

    def __init__(self, refuse: bytes = b"") -> None:
        self.calls: list[int] = []
        self.refuse = refuse

    def __call__(self, data: Sequence[torch.Tensor], mode: str, device: torch.device
                 ) -> list[torch.Tensor]:
        self.calls.append(len(data))
        out = []
        for tensor in data:
            blob = tensor.numpy().tobytes()
            if self.refuse and blob == self.refuse:
                raise RuntimeError("nvjpeg: unsupported JPEG")
            with Image.open(io.BytesIO(blob)) as image:
                array = np.asarray(image.convert(mode))
            out.append(torch.from_numpy(array.copy()).permute(2, 0, 1).to(device))
        return out


def jpeg(seed: int, **options: object) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return save(Image.fromarray(array), "JPEG", quality=95, **options)


@pytest.fixture
def gpu() -> tuple[NvJpegDecoder, StandIn]:
    stand_in = StandIn()
    return NvJpegDecoder(load_settings({}), "cpu", decode_jpeg=stand_in), stand_in


def prepared(blobs: Sequence[bytes]) -> list[object]:
    """What the decode processes send: ``prepare`` of each image (or its ItemError)."""
    out: list[object] = []
    for blob in blobs:
        try:
            out.append(NvJpegDecoder.prepare(blob, SPEC, LIMITS))
        except ItemError as exc:
            out.append(exc)
    return out


# In a decode process Pillow's own warning is off (the guards refuse instead); here it is not.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_routes_baseline_jpegs_to_the_gpu_and_the_rest_to_pillow(gpu):
    decoder, stand_in = gpu
    exif = Image.Exif()
    exif[0x0112] = 6
    gray = save(Image.fromarray(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)), "JPEG")
    blobs = [jpeg(1), gray, jpeg(2, exif=exif), image_bytes(3), jpeg(4, progressive=True),
             image_bytes(5, mode="CMYK", fmt="JPEG"), b"\xff\xd8\xff broken",
             png_bomb(10_000, 10_000), b""]
    ready = prepared(blobs)
    # In the decode process: baseline RGB/gray JPEGs are passed on as bytes, the rest decoded.
    assert [type(p).__name__ for p in ready] == ["Jpeg"] * 3 + ["ndarray"] * 3 + [
        "ItemError"] * 3
    out = decoder.finish(ready, SPEC)
    assert stand_in.calls == [3]  # one batched call: the three baseline RGB/gray JPEGs
    assert [type(o).__name__ for o in out] == ["Tensor"] * 6 + ["ItemError"] * 3
    assert [o.reason for o in out[6:]] == [Reason.UNDECODABLE, Reason.TOO_MANY_PIXELS,
                                           Reason.EMPTY]
    for tensor, blob in zip(out[:6], blobs[:6], strict=True):
        pixels = decode_image(blob, SPEC, LIMITS)
        assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.uint8
        difference = np.abs(tensor.permute(1, 2, 0).numpy().astype(int) - pixels.astype(int))
        # torch's antialiased bicubic against Pillow's reducing resize: close, not identical.
        assert difference.mean() < 4, difference.mean()


def test_a_jpeg_nvjpeg_refuses_goes_back_to_pillow_alone(gpu):
    decoder, stand_in = gpu
    odd = jpeg(7)
    stand_in.refuse = odd
    out = decoder.finish(prepared([jpeg(6), odd, jpeg(8)]), SPEC)
    assert stand_in.calls == [3, 1, 1, 1]  # the batch, then one by one
    assert isinstance(out[1], OnCpu) and out[1].data == odd
    assert all(isinstance(o, torch.Tensor) and o.shape == (3, 32, 32) for o in (out[0], out[2]))


def test_images_of_one_size_are_resized_in_one_call(monkeypatch: pytest.MonkeyPatch):
    import torch.nn.functional as F

    calls: list[int] = []
    interpolate = F.interpolate

    def counting(batch: torch.Tensor, **options: object) -> torch.Tensor:
        calls.append(len(batch))
        return interpolate(batch, **options)

    rng = np.random.default_rng(3)
    images = {i: torch.from_numpy(rng.integers(0, 256, (3, *size), dtype=np.uint8))
              for i, size in enumerate([(48, 64), (48, 64), (40, 40), (48, 64)])}
    alone = {i: resize(image, SPEC) for i, image in images.items()}
    monkeypatch.setattr(F, "interpolate", counting)
    grouped = resize_all(images, SPEC)
    assert sorted(calls) == [1, 3]  # one call per size, not one per image
    assert all(torch.equal(grouped[i], alone[i]) for i in images)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_match_pillow(orientation):
    array = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.open(io.BytesIO(save(Image.fromarray(array), "PNG", exif=exif)))
    expected = np.asarray(ImageOps.exif_transpose(image))
    turned = orient(torch.from_numpy(array).permute(2, 0, 1), orientation)
    assert np.array_equal(turned.permute(1, 2, 0).numpy(), expected)


def test_shortest_edge_checkpoints_are_cropped():
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    image[:, :, 10:70] = 255  # black edges, white middle: the centre crop keeps only white
    out = resize(image, Preprocess(height=16, width=16, shortest_edge=16))
    assert out.shape == (3, 16, 16) and int(out.min()) == 255


def test_without_torchvision_the_error_says_what_to_install():
    with pytest.raises(ConfigError, match="catalog-tagger\\[gpu\\]"):
        NvJpegDecoder(load_settings({}), "cpu")
    assert not NvJpegDecoder.preferred_on("cuda:0")  # auto takes Pillow then


def test_the_decode_processes_never_load_torch():
    loaded = heavy_imports("from worker.prep import child\n"
                           "from worker.decoders import nvjpeg, pillow\n", blocked=("torch",))
    assert "torch" not in loaded
