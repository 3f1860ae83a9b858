"""Local files: list a folder (regular files only), read a file under an allowed root folder."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from worker.core.contract import Item
from worker.core.errors import ItemError, Reason, Skip, SourceError
from worker.core.settings import Settings
from worker.sources import Budget, Linked, Listed, Skipped, Source, is_image_name, read_capped


def path_of(uri: str) -> Path:
    """The path a file:// URI (or a plain path) names; percent-escapes are the name's bytes,
    so a name that is not UTF-8 comes back as it was listed (``Path.as_uri`` wrote them)."""
    if uri.startswith("file:"):
        return Path(os.fsdecode(unquote_to_bytes(urlsplit(uri).path)))
    return Path(uri)


def shown(path: Path) -> str:
    """A path as text that can be stored and printed (bytes that are not UTF-8 as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def canonical_folder(location: str) -> Path:
    """A folder as files below it are known: absolute, without '.', '..', symlinked parents or
    a trailing slash, so that ``../photos`` from anywhere names what ``/a/photos`` names."""
    return Path(os.path.realpath(path_of(location).expanduser()))


class LocalSource(Source):
    """``file://`` URIs and absolute paths."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.max_bytes = settings.max_image_bytes

    def locate(self, location: str) -> tuple[str, list[str]]:
        """A folder given as a path or a file:// URI: its canonical path, which the run reads."""
        folder = canonical_folder(location)
        if not folder.is_dir():
            raise SourceError(f"not a folder: {shown(path_of(location).expanduser().absolute())}")
        if shown(folder) != str(folder):  # its name is recorded on the run, as text
            raise SourceError(f"the folder's path is not UTF-8 ({shown(folder)}): rename it, "
                              "or tag a folder above it (names below it may be anything)")
        return str(folder), [str(folder)]

    def listing(self, location: str, **_: Any) -> Iterator[Listed]:
        """Every file below ``location`` in a stable order; non-images and odd files skipped.

        Links to folders are not followed (they are skipped like any entry that is no file).
        """
        root = canonical_folder(location)
        if not root.is_dir():
            raise SourceError(f"not a folder: {root}")
        problems: list[OSError] = []
        for folder, dirs, files in os.walk(root, onerror=problems.append):
            while problems:
                yield Skipped(Skip.UNREADABLE, str(problems.pop()))
            dirs.sort()
            links = [name for name in dirs if os.path.islink(os.path.join(folder, name))]
            for name in sorted(files + links):
                yield self._entry(Path(folder, name), root)

    @staticmethod
    def _entry(path: Path, root: Path) -> Listed:
        if not is_image_name(path.name):
            return Skipped(Skip.NOT_IMAGE, str(path))
        try:
            info = path.stat()  # follows links: a link is listed as what it points to
        except FileNotFoundError:
            return Skipped(Skip.BROKEN_LINK, str(path))
        except OSError as exc:
            return Skipped(Skip.UNREADABLE, f"{path}: {exc.strerror}")
        if not stat.S_ISREG(info.st_mode):
            return Skipped(Skip.NOT_A_FILE, str(path))
        version = f"{info.st_mtime_ns:x}-{info.st_size:x}"
        # The folders walked are real ones: only a link can lead out of the root.
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        if target.is_relative_to(root):
            return Item(uri=path.as_uri(), version=version)
        # A link out of the folder: the user chose this folder, so the file it points to is
        # read too (the run records it as readable), unless the user could not read it.
        if not os.access(target, os.R_OK):
            return Skipped(Skip.UNREADABLE, f"{shown(path)} -> {shown(target)}: permission denied")
        if shown(target) != str(target):  # recorded on the run as text, as its folder is
            return Skipped(Skip.UNREADABLE, f"{shown(path)} -> {shown(target)}: not UTF-8")
        return Linked(uri=path.as_uri(), version=version, target=str(target))

    def check(self, uri: str, budget: Budget) -> None:
        self._allowed(uri, budget)

    @staticmethod
    def _allowed(uri: str, budget: Budget) -> Path:
        """The file's real path, if it is under a folder files may be read from."""
        path = Path(os.path.realpath(path_of(uri)))
        # Checked before the file is touched, so the answer says nothing about what exists.
        if not any(path.is_relative_to(root) for root in budget.file_roots):
            raise ItemError(Reason.OUTSIDE_ROOTS,
                            f"{uri} is outside the folders files may be read from "
                            "(the run's own folder and TAGGER_FILE_ROOTS)")
        return path

    def fetch(self, uri: str, budget: Budget) -> bytes:
        path = self._allowed(uri, budget)
        try:
            # O_NONBLOCK: a FIFO would block open() for ever; it is refused below instead.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise ItemError(Reason.NOT_FOUND, f"no such file: {shown(path)}") from exc
        except PermissionError as exc:
            raise ItemError(Reason.FORBIDDEN,
                            f"cannot read {shown(path)}: permission denied") from exc
        except OSError as exc:
            raise ItemError(Reason.NOT_A_FILE,
                            f"cannot open {shown(path)}: {exc.strerror}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # before fdopen, which refuses a folder itself
            os.close(fd)
            raise ItemError(Reason.NOT_A_FILE, f"{shown(path)} is not a regular file")
        with os.fdopen(fd, "rb") as handle:
            return read_capped(handle.read, uri, self.max_bytes, budget, info.st_size)
