"""Where the GPU decoder's work runs, and the waits that keep it from racing other work.

nvJPEG's hardware decoder does not wait for work queued before it on the stream it is handed,
while torch's caching allocator gives a block freed on that stream to the next allocation at
once: a decode can overwrite memory that queued kernels still read (pytorch/vision PR 9606:
134 of 200 runs corrupted on an H100; 0 of 200 once the stream is drained first). The decoder
therefore works on a stream of its own, drained before every decode (only its own work is
queued there, so the forward pass does not wait), and hands its outputs to the caller's stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Streams:
    """The decoder's own CUDA stream on a GPU; on the CPU every step is nothing."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Run the block's kernels (decodes, resizes) on the decoder's stream."""
        import torch

        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            yield

    def drain(self) -> None:
        """Wait until the decoder's stream is idle: nothing queued may read what nvJPEG writes."""
        if self.stream is not None:
            self.stream.synchronize()

    def hand_over(self, tensors: Sequence[torch.Tensor]) -> None:
        """The caller's stream waits for ``tensors`` to be written, and the allocator keeps
        their memory until that stream has used them."""
        import torch

        if self.stream is None:
            return
        caller = torch.cuda.current_stream(self.device)
        caller.wait_stream(self.stream)
        for tensor in tensors:
            tensor.record_stream(caller)

    def release(self, _size: int = 0) -> None:
        """Give cached blocks back after a failed attempt (out of memory), before the next."""
        import torch

        if self.stream is not None:
            torch.cuda.empty_cache()
