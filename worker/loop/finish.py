"""The decoder's last step, in the model's process; images it hands back go to a decode process."""

from __future__ import annotations

from typing import Any

from worker.core.pixels import Preprocess
from worker.decoders import Decoder, OnCpu, fallback_of
from worker.prep.pool import PrepPool


class Finisher:
    """Finishes prepared images into pixels (nvJPEG: on the GPU); those the decoder gives back
    (`OnCpu`: a JPEG it cannot decode) are prepared again in a decode process by the decoder
    its registration names as its fallback (nvJPEG's: Pillow)."""

    def __init__(self, decoder: Decoder, prep: PrepPool, spec: Preprocess) -> None:
        self.decoder = decoder
        self.prep = prep
        self.spec = spec

    def finish(self, prepared: list[Any]) -> list[Any]:
        """Each image's pixels, or its ItemError, in order."""
        spec = self.spec
        out = self.decoder.finish(prepared, spec)
        back = [(i, p.data) for i, p in enumerate(out) if isinstance(p, OnCpu)]
        if back:
            fallback = fallback_of(self.decoder.name)
            answers = {a.index: a.outcome for a in self.prep.prepare(back, decoder=fallback)}
            again = self.decoder.finish([answers[i] for i, _ in back], spec)
            for (i, _), pixels in zip(back, again, strict=True):
                out[i] = pixels
        return out
