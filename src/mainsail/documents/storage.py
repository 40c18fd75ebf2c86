"""Originals on disk: uploads stream into a staging file (hashed and measured as they arrive,
never held in memory), then move under their document and revision."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from mainsail.core.errors import PayloadTooLarge

HEAD_BYTES = 8192


@dataclass
class StagedFile:
    path: Path
    size: int
    sha256: str
    head: bytes  # the first bytes, for sniffing


class StagingWriter:
    """Receives an upload piece by piece; refuses it the moment it crosses the limit."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            self.discard()
            raise PayloadTooLarge(
                f"The file is larger than the {self.max_bytes}-byte limit "
                "(MAINSAIL_DOCUMENTS__MAX_UPLOAD_BYTES)."
            )
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
        self._hash.update(data)
        self._file.write(data)

    def finish(self) -> StagedFile:
        self._file.close()
        return StagedFile(self.path, self.size, self._hash.hexdigest(), bytes(self._head))

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class LocalStore:
    """``<root>/<document id>/<revision>``; staging under ``<root>/.staging``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / ".staging"

    def writer(self, max_bytes: int) -> StagingWriter:
        return StagingWriter(self.staging, max_bytes)

    def path(self, document_id: uuid.UUID, revision: int) -> Path:
        return self.root / str(document_id) / str(revision)

    def keep(self, staged: StagedFile, document_id: uuid.UUID, revision: int) -> Path:
        target = self.path(document_id, revision)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        return target

    def delete_revisions(self, document_id: uuid.UUID, *, below: int) -> None:
        folder = self.root / str(document_id)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name.isdigit() and int(entry.name) < below:
                entry.unlink(missing_ok=True)

    def delete(self, document_id: uuid.UUID) -> None:
        shutil.rmtree(self.root / str(document_id), ignore_errors=True)
