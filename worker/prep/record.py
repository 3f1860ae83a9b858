"""What a decode process is decoding right now, in shared memory: read by its parent after it
dies, so the item that killed it (and its content hash) is known without a message per item."""

from __future__ import annotations

import mmap
import os
import struct

_LAYOUT = struct.Struct("<?qq64s")  # decoding, job, index, sha256 (hex)


class Record:
    """One decode process's record; ``fd`` is inherited by the process, or created here."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("tagger-decoding", 0)
            os.ftruncate(fd, _LAYOUT.size)
        self.fd = fd
        self.memory = mmap.mmap(fd, _LAYOUT.size)

    def write(self, job: int, index: int, sha256: str) -> None:
        _LAYOUT.pack_into(self.memory, 0, True, job, index, sha256.encode("ascii"))

    def clear(self) -> None:
        self.memory[0] = 0

    def read(self) -> tuple[int, int, str] | None:
        """(job, index, sha256) of the decode in progress, or None."""
        decoding, job, index, sha = _LAYOUT.unpack_from(self.memory, 0)
        return (job, index, sha.decode("ascii")) if decoding else None

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)
