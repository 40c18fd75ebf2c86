"""Where uploaded originals live: a local directory, or an S3-compatible object store.

Uploads stream into a local staging file (hashed and measured as they arrive, never held in
memory); ``keep`` then moves it under its document and revision (``LocalStore``) or uploads
it with a managed multipart transfer and removes it (``S3Store``). The ingestion job reads an
original through ``local_copy``: the file itself, or a temporary download of the object.

The stores' methods block (file system, boto3): async code calls them in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mainsail.core.errors import PayloadTooLarge, ServiceUnavailable
from mainsail.core.logging import get_logger

if TYPE_CHECKING:
    from mainsail.settings import DocumentSettings

log = get_logger(__name__)
HEAD_BYTES = 8192
# Parts of a multipart upload (S3 allows at most 10,000: 8 MiB parts go to 78 GiB, above the
# largest upload the settings allow), and parts sent at once.
PART_BYTES = 8 * 1_048_576
TRANSFER_THREADS = 4
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes


class StorageUnavailable(ServiceUnavailable):
    code, title = "storage_unavailable", "Document storage unavailable"


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


class DocumentStore(Protocol):
    """What the upload route, the document service and the ingestion job need of a store."""

    def writer(self, max_bytes: int) -> StagingWriter:
        """A local staging file for an upload."""
        ...

    def keep(self, staged: StagedFile, document_id: uuid.UUID, revision: int) -> None:
        """Stores the staged file as this revision's original; the staging file is gone
        afterwards, also when this raises."""
        ...

    def local_copy(
        self, document_id: uuid.UUID, revision: int
    ) -> AbstractAsyncContextManager[Path]:
        """A local file with the revision's original for as long as the context lasts;
        ``FileNotFoundError`` when there is none (on entering, or on reading the path)."""
        ...

    def delete_revisions(self, document_id: uuid.UUID, *, below: int) -> None:
        """Removes the document's originals older than ``below`` (best effort)."""
        ...

    def delete(self, document_id: uuid.UUID) -> None:
        """Removes every original of the document (best effort)."""
        ...


class LocalStore:
    """``<root>/<document id>/<revision>``; staging under ``<root>/.staging``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / ".staging"

    def writer(self, max_bytes: int) -> StagingWriter:
        return StagingWriter(self.staging, max_bytes)

    def path(self, document_id: uuid.UUID, revision: int) -> Path:
        return self.root / str(document_id) / str(revision)

    def keep(self, staged: StagedFile, document_id: uuid.UUID, revision: int) -> None:
        target = self.path(document_id, revision)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.path, target)
        except BaseException:
            staged.path.unlink(missing_ok=True)
            raise

    @asynccontextmanager
    async def local_copy(self, document_id: uuid.UUID, revision: int) -> AsyncIterator[Path]:
        yield self.path(document_id, revision)  # missing: reading it raises FileNotFoundError

    def delete_revisions(self, document_id: uuid.UUID, *, below: int) -> None:
        folder = self.root / str(document_id)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name.isdigit() and int(entry.name) < below:
                entry.unlink(missing_ok=True)

    def delete(self, document_id: uuid.UUID) -> None:
        shutil.rmtree(self.root / str(document_id), ignore_errors=True)


class S3Store:
    """Objects ``<prefix><document id>/<revision>`` in one bucket of an S3-compatible store;
    staging and the ingestion job's temporary copies under a local directory.

    Every call runs under the client's timeouts and retry policy (botocore's standard mode:
    connection errors, timeouts, 5xx and throttling are retried with backoff)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        staging: Path,
        prefix: str = "documents/",
        max_attempts: int = 3,
        part_bytes: int = PART_BYTES,
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        self.client = client  # a boto3 S3 client: thread-safe, shared by every call
        self.bucket = bucket
        self.prefix = prefix
        self.staging = staging
        self.transfer = TransferConfig(
            multipart_threshold=part_bytes,
            multipart_chunksize=part_bytes,
            max_concurrency=TRANSFER_THREADS,
            # A download cut off mid-body is read again this many times in all.
            num_download_attempts=max_attempts,
            preferred_transfer_client="classic",  # botocore's client, with its Config
        )

    @classmethod
    def from_settings(cls, config: DocumentSettings, *, staging: Path) -> S3Store:
        import boto3
        from botocore.config import Config

        if not config.s3_bucket:
            raise ValueError("storage 's3' needs a bucket (MAINSAIL_DOCUMENTS__S3_BUCKET)")
        client = boto3.session.Session().client(
            "s3",
            region_name=config.s3_region,
            endpoint_url=config.s3_endpoint_url,
            config=Config(
                connect_timeout=config.s3_connect_timeout_s,
                read_timeout=config.s3_read_timeout_s,
                # total_max_attempts counts the first try; botocore's max_attempts would not.
                retries={"total_max_attempts": config.s3_max_attempts, "mode": "standard"},
                s3={"addressing_style": config.s3_addressing_style},
                max_pool_connections=2 * TRANSFER_THREADS + 2,
            ),
        )
        return cls(
            client,
            config.s3_bucket,
            staging=staging,
            prefix=config.s3_prefix,
            max_attempts=config.s3_max_attempts,
        )

    def key(self, document_id: uuid.UUID, revision: int) -> str:
        return f"{self.prefix}{document_id}/{revision}"

    def writer(self, max_bytes: int) -> StagingWriter:
        return StagingWriter(self.staging, max_bytes)

    def keep(self, staged: StagedFile, document_id: uuid.UUID, revision: int) -> None:
        key = self.key(document_id, revision)
        try:
            self.client.upload_file(str(staged.path), self.bucket, key, Config=self.transfer)
        except Exception as exc:
            reason = _reason(exc)
            log.warning("document_upload_failed", bucket=self.bucket, key=key, error=reason)
            raise StorageUnavailable(
                f"The document store did not take the file ({reason}); try again shortly."
            ) from None
        finally:
            staged.path.unlink(missing_ok=True)

    @asynccontextmanager
    async def local_copy(self, document_id: uuid.UUID, revision: int) -> AsyncIterator[Path]:
        # A directory of its own: a download still running in its thread when the job is
        # cancelled writes next to its target and fails once the directory is gone.
        folder = Path(await asyncio.to_thread(self._temporary_directory))
        try:
            path = folder / "original"
            await asyncio.to_thread(self._download, self.key(document_id, revision), path)
            yield path
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

    def _temporary_directory(self) -> str:
        self.staging.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix="ingest-", dir=self.staging)

    def _download(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, key, str(path), Config=self.transfer)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey"):
                raise FileNotFoundError(f"no object {key!r} in bucket {self.bucket!r}") from None
            raise

    def delete_revisions(self, document_id: uuid.UUID, *, below: int) -> None:
        folder = f"{self.prefix}{document_id}/"
        self._delete_under(
            document_id,
            folder,
            lambda name: name.isdigit() and int(name) < below,
        )

    def delete(self, document_id: uuid.UUID) -> None:
        self._delete_under(document_id, f"{self.prefix}{document_id}/", lambda name: True)

    def _delete_under(
        self, document_id: uuid.UUID, folder: str, doomed: Callable[[str], bool]
    ) -> None:
        try:
            keys = [
                item["Key"]
                for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=folder
                )
                for item in page.get("Contents", ())
                if doomed(item["Key"][len(folder) :])
            ]
            failed: list[str] = []
            for start in range(0, len(keys), _DELETE_BATCH):
                batch = keys[start : start + _DELETE_BATCH]
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
                failed += [error.get("Key", "") for error in answer.get("Errors", ())]
        except Exception as exc:
            # Like a local file that cannot be removed: the document's rows are gone or
            # replaced already, and an orphaned object does no harm but cost.
            log.warning(
                "document_objects_left",
                document_id=str(document_id),
                bucket=self.bucket,
                error=_reason(exc),
            )
            return
        if failed:
            log.warning(
                "document_objects_left",
                document_id=str(document_id),
                bucket=self.bucket,
                keys=failed[:20],
            )


def open_store(config: DocumentSettings, data_dir: Path) -> DocumentStore:
    """The store the settings choose (an S3 client is built here: call it in a thread)."""
    root = config.storage_dir or data_dir / "documents"
    if config.storage == "s3":
        return S3Store.from_settings(config, staging=root / ".staging")
    return LocalStore(root)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _reason(exc: Exception) -> str:
    """The S3 error code, or the exception's class name (messages can carry hosts and keys)."""
    cause = exc.__cause__ or exc.__context__
    for candidate in (exc, cause):
        if isinstance(candidate, Exception) and (code := _error_code(candidate)):
            return code
    return type(exc).__name__
