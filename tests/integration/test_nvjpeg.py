"""The nvJPEG decoder's logic on the CPU: routing, fallback, EXIF, resize, streams, memory.

torchvision's decode_jpeg cannot be installed beside this machine's CPU torch, so the GPU call is
replaced by a stand-in with its contract (a list of 1-D uint8 CPU tensors in, (C, H, W) uint8
tensors out, RuntimeError and no partial result on a bad one), CUDA's streams by a recording
one, and a device's out-of-memory by a stand-in that raises it; everything around them is real.
"""

from __future__ import annotations

import io
import weakref
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from testkit.images import image_bytes, photo_like, png_bomb, save
from testkit.imports import heavy_imports
from worker.core.errors import ConfigError, ItemError, Reason
from worker.core.pixels import Preprocess
from worker.core.settings import load_settings
from worker.decoders import Limits, OnCpu
from worker.decoders.nvjpeg import NvJpegDecoder, orient
from worker.decoders.pillow import PillowDecoder, decode_image
from worker.decoders.probe import check_decoder
from worker.decoders.resample import resize_batch
from worker.decoders.streams import Streams

SPEC = Preprocess(height=32, width=32)
LIMITS = Limits.from_settings(load_settings({}))


class StandIn:
    """decode_jpeg's contract, decoding with Pillow; records what it was given."""

    def __init__(self, refuse: bytes = b"", events: list[str] | None = None) -> None:
        self.calls: list[int] = []
        self.refuse = refuse
        self.events = [] if events is None else events

    def __call__(self, data: Sequence[torch.Tensor], mode: str, device: torch.device
                 ) -> list[torch.Tensor]:
        self.calls.append(len(data))
        self.events.append("decode")
        out = []
        for tensor in data:
            blob = tensor.numpy().tobytes()
            if self.refuse and blob == self.refuse:
                raise RuntimeError("nvjpeg: unsupported JPEG")
            with Image.open(io.BytesIO(blob)) as image:
                array = np.asarray(image.convert(mode))
            out.append(torch.from_numpy(array.copy()).permute(2, 0, 1).to(device))
        return out


class RecordingStreams(Streams):
    """CUDA's stream discipline on the CPU: each step written to a shared list."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(torch.device("cpu"))
        self.events = events
        self.handed: list[torch.Tensor] = []

    def drain(self) -> None:
        self.events.append("drain")

    def hand_over(self, tensors: Sequence[torch.Tensor]) -> None:
        self.events.append("hand over")
        self.handed += tensors


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
    blobs = [jpeg(seed) for seed in range(64)]
    stand_in.refuse = blobs[37]
    out = decoder.finish(prepared(blobs), SPEC)
    # Halves, not one call per image: the batch, then log2(64) levels of two calls each.
    assert len(stand_in.calls) <= 1 + 2 * 6, stand_in.calls
    assert isinstance(out[37], OnCpu) and out[37].data == blobs[37]
    assert all(isinstance(o, torch.Tensor) and o.shape == (3, 32, 32)
               for i, o in enumerate(out) if i != 37)


def test_every_decode_waits_for_the_decoders_stream_to_drain():
    events: list[str] = []
    streams = RecordingStreams(events)
    decoder = NvJpegDecoder(load_settings({}), "cpu", decode_jpeg=StandIn(jpeg(3), events),
                            streams=streams)
    out = decoder.finish(prepared([jpeg(seed) for seed in range(6)]), SPEC)
    decodes = [i for i, event in enumerate(events) if event == "decode"]
    assert len(decodes) > 1  # the refused JPEG made it decode in halves
    assert all(events[i - 1] == "drain" for i in decodes), events
    assert events[-1] == "hand over"
    assert [id(t) for t in streams.handed] == [id(o) for o in out if isinstance(o, torch.Tensor)]


def test_a_batch_is_decoded_in_parts_that_fit_the_budget(gpu):
    decoder, stand_in = gpu
    ready = prepared([jpeg(seed) for seed in range(12)])
    decoder.budget = 4 * ready[0].cost  # 64 x 24 MP photos would need ~28 GB at once
    out = decoder.finish(ready, SPEC)
    assert stand_in.calls == [4, 4, 4]
    assert all(isinstance(o, torch.Tensor) and o.shape == (3, 32, 32) for o in out)


class OutOfMemoryOnResize(NvJpegDecoder):
    """A device with room to resize two images at once: more raises, as CUDA does, after the
    call has allocated its canvas; records whether an earlier failure's canvas was still alive."""

    def __init__(self) -> None:
        super().__init__(load_settings({}), "cpu", decode_jpeg=StandIn())
        self.failed: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_retry: list[int] = []
        self.sizes: list[int] = []

    def _resize(self, spec: Preprocess):  # type: ignore[no-untyped-def]
        run = super()._resize(spec)

        def tight(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            self.alive_at_retry.append(sum(ref() is not None for ref in self.failed))
            self.sizes.append(len(images))
            canvas = torch.zeros(len(images), 3, 64, 64)
            if len(images) > 2:
                self.failed.append(weakref.ref(canvas))
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 28.00 GiB")
            return run(images)
        return tight


def test_out_of_memory_while_resizing_halves_the_part_and_releases_it_first():
    decoder = OutOfMemoryOnResize()
    blobs = [jpeg(seed) for seed in range(8)]
    out = decoder.finish(prepared(blobs), SPEC)
    assert decoder.sizes == [8, 4, 2, 2, 4, 2, 2]
    assert decoder.alive_at_retry == [0] * 7  # no retry ran beside the canvas that failed
    for tensor, blob in zip(out, blobs, strict=True):
        assert torch.equal(tensor, resize_batch([decode_full(blob)], SPEC, torch.float32,
                                                draft=True)[0])


def decode_full(blob: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(blob)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def resize_ops(run: object) -> list[str]:
    """The resizing operators torch ran (profiled on the CPU) while ``run()`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()  # type: ignore[operator]
    return [e.name for e in prof.events()
            if e.name in {"aten::_upsample_bicubic2d_aa", "aten::upsample_bicubic2d",
                          "aten::matmul"}]


def test_images_of_many_sizes_are_resized_in_one_call(gpu):
    decoder, _ = gpu
    blobs = [save(Image.fromarray(np.random.default_rng(w).integers(
        0, 256, (h, w, 3), dtype=np.uint8)), "JPEG") for h, w in
        [(480, 640), (470, 640), (480, 620), (460, 600), (480, 600), (450, 640)]]
    ready = prepared(blobs)
    out: list[object] = []
    ops = resize_ops(lambda: out.extend(decoder.finish(ready, SPEC)))
    assert ops == ["aten::matmul", "aten::matmul"]  # columns, then rows: not one per size
    for tensor, blob in zip(out, blobs, strict=True):
        difference = tensor.permute(1, 2, 0).numpy().astype(int) - decode_image(
            blob, SPEC, LIMITS).astype(int)
        assert np.abs(difference).mean() < 1.5, np.abs(difference).mean()


def test_a_panorama_is_resized_without_a_filter_that_grows_with_the_scale(gpu):
    # CUDA's antialiased bicubic keeps the filter's taps in shared memory: at ~19,000 px to
    # 224 it raises "Too much shared memory required" and the chunk failed. Matrices do not.
    decoder, _ = gpu
    rows = np.linspace(0, 255, 19_200, dtype=np.float32)
    array = np.broadcast_to(rows[None, :, None], (400, 19_200, 3)).astype(np.uint8)
    blob = save(Image.fromarray(array), "JPEG", quality=95)
    out: list[object] = []
    ops = resize_ops(lambda: out.extend(decoder.finish(prepared([blob]), SPEC)))
    assert "aten::_upsample_bicubic2d_aa" not in ops
    difference = out[0].permute(1, 2, 0).numpy().astype(int) - decode_image(  # type: ignore
        blob, SPEC, LIMITS).astype(int)
    assert np.abs(difference).mean() < 1.5


def test_the_gpu_path_gives_the_model_the_cpu_paths_pixels(gpu):
    # The CPU path decodes a JPEG at a reduced scale (libjpeg's draft); nvJPEG decodes it
    # whole. Resized alike, they differed by ~0.9 levels on average on real photos (up to 2.3);
    # scaled as the draft does, by ~0.3 (up to 0.65).
    decoder, _ = gpu
    blobs = [photo_like(seed) for seed in range(4)]
    big = Preprocess(height=224, width=224)
    out = decoder.finish(prepared(blobs), big)
    for tensor, blob in zip(out, blobs, strict=True):
        cpu = decode_image(blob, big, LIMITS).astype(int)
        difference = np.abs(tensor.permute(1, 2, 0).numpy().astype(int) - cpu).mean()
        assert difference < 0.6, difference


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
    out = resize_batch([image], Preprocess(height=16, width=16, shortest_edge=16),
                       torch.float32)[0]
    assert out.shape == (3, 16, 16) and int(out.min()) == 255


def test_without_torchvision_the_error_says_what_to_install():
    with pytest.raises(ConfigError, match="catalog-tagger\\[gpu\\]"):
        NvJpegDecoder(load_settings({}), "cpu")
    assert not NvJpegDecoder.preferred_on("cuda:0")  # auto takes Pillow then


def test_the_decode_processes_never_load_torch():
    loaded = heavy_imports("from worker.prep import child\n"
                           "from worker.decoders import nvjpeg, pillow\n", blocked=("torch",))
    assert "torch" not in loaded


class Broken(StandIn):
    """An install whose nvJPEG fails on every image (a torchvision built without it)."""

    def __call__(self, data, mode, device):  # type: ignore[no-untyped-def]
        raise RuntimeError("Not compiled with GPU support")


class Garbage(StandIn):
    """A decode that returns the wrong pixels (black), as a mismatched build might."""

    def __call__(self, data, mode, device):  # type: ignore[no-untyped-def]
        return [torch.zeros_like(t) for t in super().__call__(data, mode, device)]


@pytest.mark.parametrize(("stand_in", "message"), [(Broken, "could not decode a probe JPEG"),
                                                   (Garbage, "decoded a probe JPEG wrongly")])
def test_a_broken_nvjpeg_refuses_the_worker_instead_of_using_pillow_quietly(stand_in, message):
    decoder = NvJpegDecoder(load_settings({}), "cpu", decode_jpeg=stand_in())
    with pytest.raises(ConfigError, match=message):
        check_decoder(decoder, SPEC, LIMITS)


def test_working_decoders_pass_the_probe(gpu):
    check_decoder(gpu[0], SPEC, LIMITS)
    check_decoder(PillowDecoder(load_settings({})), SPEC, LIMITS)


def test_warm_up_refuses_a_worker_whose_nvjpeg_is_broken(tiny_model, sqlite_url, tmp_path,
                                                         monkeypatch: pytest.MonkeyPatch):
    from worker.decoders import nvjpeg
    from worker.service import startup

    monkeypatch.setattr(nvjpeg, "torchvision_decode_jpeg", Broken)  # importable, not working
    monkeypatch.setattr(startup, "_checked", None)
    settings = load_settings({
        "TAGGER_MODEL": str(tiny_model), "DATABASE_URL": sqlite_url, "TAGGER_DEVICE": "cpu",
        "TAGGER_HOME": str(tmp_path / "home"), "TAGGER_CACHE_DIR": str(tmp_path / "cache"),
        "TAGGER_BACKEND": "torch", "TAGGER_PRECISION": "float32", "TAGGER_DECODER": "nvjpeg",
        "TAGGER_DECODE_PROCESSES": "1"})
    with pytest.raises(ConfigError, match="could not decode a probe JPEG"):
        startup.warm_up(settings)
