"""Originals in an S3-compatible object store (``MAINSAIL_DOCUMENTS__STORAGE=s3``), against a
real S3 HTTP server on 127.0.0.1 (moto's), through the real upload route and ingestion job."""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from fastapi import FastAPI
from moto.server import ThreadedMotoServer
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.documents.storage import S3Store, StagingWriter, StorageUnavailable, open_store
from mainsail.settings import DocumentSettings, Settings
from mainsail.worker import build_runner
from tests.documents.conftest import QUICK_JOBS, Upload, chunk_rows, essay, wait_for_status
from tests.fixtures.app import make_settings, wait_until
from tests.fixtures.identity import Account
from tests.fixtures.logs import CapturedLogs

PREFIX = "originals/"
REGION = "us-east-1"
EXTERNAL_JOBS: dict[str, Any] = {"executor": "external", "max_attempts": 2, "backoff_base_s": 0}
# Small timeouts and a single attempt: a refused connection fails the call at once.
OUTAGE: dict[str, Any] = {"s3_connect_timeout_s": 0.5, "s3_read_timeout_s": 1, "s3_max_attempts": 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class S3Server:
    """moto's S3 on a fixed local port, which a test may stop and start again (moto keeps its
    buckets in the process, so they outlive a restart)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials from the environment, and nothing from this machine's AWS files."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_server(aws_env: None) -> Iterator[S3Server]:
    server = S3Server(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> Any:
    """A plain boto3 client on the same server, to look behind the service's back."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"mainsail-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def jobs() -> dict[str, Any]:
    return QUICK_JOBS


@pytest.fixture
def s3_overrides() -> dict[str, Any]:
    return {}


def s3_documents(endpoint: str, bucket: str, storage_dir: Path, **more: Any) -> dict[str, Any]:
    return {
        "storage": "s3",
        "storage_dir": str(storage_dir),
        "s3_bucket": bucket,
        "s3_prefix": PREFIX,
        "s3_endpoint_url": endpoint,
        "s3_region": REGION,
        "s3_addressing_style": "path",
        "s3_connect_timeout_s": 2,
        "s3_read_timeout_s": 10,
        **more,
    }


@pytest.fixture
def settings(
    database_url: URL,
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
    jobs: dict[str, Any],
    s3_overrides: dict[str, Any],
) -> Settings:
    return make_settings(
        database_url,
        jobs=jobs,
        documents=s3_documents(s3_server.endpoint, bucket, tmp_path / "documents", **s3_overrides),
    )


def keys(s3: Any, bucket: str, prefix: str = PREFIX) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", ()))


def body_of(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def local_leftovers(app: FastAPI) -> list[str]:
    """Whatever is under the local directory: staging files, temporary copies."""
    root: Path = app.state.documents.store.staging.parent
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_an_upload_becomes_an_object_and_is_ingested_from_it(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload, s3: Any, bucket: str
) -> None:
    assert isinstance(app.state.documents.store, S3Store)
    body = essay(20).encode()
    created = await upload(alice, body, "voyage.txt")
    assert created.status_code == 202, created.text
    document_id = created.json()["id"]
    # In the bucket before the answer: the object is written in the upload's unit of work.
    assert keys(s3, bucket) == [f"{PREFIX}{document_id}/1"]
    assert body_of(s3, bucket, f"{PREFIX}{document_id}/1") == body
    ready = await wait_for_status(client, alice, document_id, "ready", "failed")
    assert ready["status"] == "ready", ready["error"]
    chunks = await chunk_rows(app, document_id)
    assert ready["chunk_count"] == len(chunks) > 3
    source = body.decode()
    assert all(source[c["char_start"] : c["char_end"]] == c["text"] for c in chunks)
    # Neither the staging file nor the job's temporary copy stays on the local disk.
    assert local_leftovers(app) == []


async def test_a_revision_replaces_the_older_object_once_active(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload, s3: Any, bucket: str
) -> None:
    first = await upload(alice, essay(5).encode(), "report.txt")
    document_id = first.json()["id"]
    await wait_for_status(client, alice, document_id, "ready")
    changed = essay(8, seed=5).encode()
    second = await upload(alice, changed, "report.txt")
    assert second.status_code == 202, second.text
    assert (second.json()["id"], second.json()["revision"]) == (document_id, 2)
    ready = await wait_for_status(client, alice, document_id, "ready", "failed")
    assert (ready["status"], ready["active_revision"]) == ("ready", 2)

    # The older object is deleted once the revision's activation has committed (just after
    # the document reads ready).
    async def only_the_new_object() -> bool:
        return keys(s3, bucket) == [f"{PREFIX}{document_id}/2"]

    await wait_until(only_the_new_object, within_s=10)
    assert body_of(s3, bucket, f"{PREFIX}{document_id}/2") == changed
    assert {c["revision"] for c in await chunk_rows(app, document_id)} == {2}


async def test_deleting_a_document_deletes_its_objects_only(
    client: httpx.AsyncClient, alice: Account, upload: Upload, s3: Any, bucket: str
) -> None:
    doomed = (await upload(alice, essay(3).encode(), "doomed.txt")).json()["id"]
    kept = (await upload(alice, essay(3, seed=1).encode(), "kept.txt")).json()["id"]
    await wait_for_status(client, alice, doomed, "ready")
    await wait_for_status(client, alice, kept, "ready")
    # A stray object of the same document (from an interrupted revision) goes too.
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}{doomed}/7", Body=b"stray")
    deleted = await client.delete(f"/documents/{doomed}", headers=alice.headers)
    assert deleted.status_code == 204
    assert keys(s3, bucket) == [f"{PREFIX}{kept}/1"]


@pytest.mark.parametrize("jobs", [EXTERNAL_JOBS])
async def test_an_object_gone_behind_our_back_fails_the_document_readably(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    s3: Any,
    bucket: str,
    settings: Settings,
) -> None:
    created = await upload(alice, essay(3).encode(), "vanishing.txt")
    assert created.status_code == 202
    document_id, job_id = created.json()["id"], created.json()["job_id"]
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}{document_id}/1")
    runner = await build_runner(settings, app.state.db)
    assert await runner.run_one()
    document = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert document["status"] == "failed"
    assert document["error"] == "The uploaded file is no longer in storage; upload it again."
    job = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
    assert job["state"] == "failed"  # permanent: not retried
    assert local_leftovers(app) == []


@pytest.mark.parametrize("s3_overrides", [OUTAGE])
async def test_an_unreachable_store_refuses_the_upload_and_leaves_nothing_behind(
    s3_server: S3Server,
    bucket: str,
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    s3: Any,
) -> None:
    first = await upload(alice, essay(4).encode(), "manual.txt")
    document_id = first.json()["id"]
    await wait_for_status(client, alice, document_id, "ready")
    s3_server.stop()  # the port is closed now

    # A new document and a new revision of an existing one: both refused with a 503.
    fresh = essay(3, seed=9).encode()
    changed = essay(6, seed=2).encode()
    for filename, body in (("new.txt", fresh), ("manual.txt", changed)):
        refused = await upload(alice, body, filename)
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        problem = refused.json()
        assert problem["code"] == "storage_unavailable"
        assert "try again" in problem["detail"]
        assert "127.0.0.1" not in problem["detail"]  # no endpoint in the answer

    assert local_leftovers(app) == []
    async with app.state.db.engine.connect() as connection:
        rows = (await connection.execute(text("SELECT id, revision, status FROM documents"))).all()
        job_count = await connection.scalar(text("SELECT count(*) FROM jobs"))
    assert [(str(r.id), r.revision, r.status) for r in rows] == [(document_id, 1, "ready")]
    assert job_count == 1  # only the first upload's

    # Once the store answers again, the same uploads go through: nothing blocks a retry.
    s3_server.start()
    retried = await upload(alice, fresh, "new.txt")
    assert retried.status_code == 202, retried.text  # not 200: no row kept those bytes
    revised = await upload(alice, changed, "manual.txt")
    assert revised.status_code == 202, revised.text
    assert (revised.json()["id"], revised.json()["revision"]) == (document_id, 2)
    for created in (retried, revised):
        ready = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
        assert ready["status"] == "ready", ready["error"]
    assert body_of(s3, bucket, f"{PREFIX}{document_id}/2") == changed


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_closed_port_fails_after_the_configured_attempts_and_drops_the_staging_file(
    aws_env: None, tmp_path: Path, attempts: int
) -> None:
    closed = free_port()
    outage = {**OUTAGE, "s3_max_attempts": attempts}
    config = DocumentSettings(
        **s3_documents(f"http://127.0.0.1:{closed}", "unreachable", tmp_path, **outage)
    )
    store = open_store(config, tmp_path)
    assert isinstance(store, S3Store)
    client_config = store.client.meta.config
    assert (client_config.connect_timeout, client_config.read_timeout) == (0.5, 1)
    assert client_config.s3 == {"addressing_style": "path"}
    sent: list[str] = []
    store.client.meta.events.register(
        "before-send.s3.*", lambda request, **_: sent.append(request.method)
    )
    staged = stage(store, b"some text")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="EndpointConnectionError"):
        store.keep(staged, uuid.uuid4(), 1)
    assert sent == ["PUT"] * attempts  # the first try counts as one
    if attempts == 1:
        assert time.monotonic() - started < 5  # no backoff
    assert not staged.path.exists()


# --- S3Store on its own ----------------------------------------------------------------------


def stage(store: S3Store, data: bytes) -> Any:
    writer: StagingWriter = store.writer(len(data) + 1)
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start : start + (1 << 20)])
    return writer.finish()


def make_store(s3_server: S3Server, bucket: str, tmp_path: Path, **more: Any) -> S3Store:
    config = DocumentSettings(**s3_documents(s3_server.endpoint, bucket, tmp_path / "docs"))
    store = open_store(config, tmp_path)
    assert isinstance(store, S3Store)
    if more:
        store = S3Store(store.client, bucket, staging=store.staging, prefix=PREFIX, **more)
    return store


async def test_a_large_file_goes_up_in_parts_and_comes_back_whole(
    s3_server: S3Server, s3: Any, bucket: str, tmp_path: Path
) -> None:
    part = 5 * 1_048_576  # S3's smallest part
    store = make_store(s3_server, bucket, tmp_path, part_bytes=part)
    data = bytes(range(256)) * (11 * 4096)  # 11 MiB: three parts
    staged = stage(store, data)
    document_id = uuid.uuid4()
    store.keep(staged, document_id, 3)
    assert not staged.path.exists()
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}{document_id}/3")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    async with store.local_copy(document_id, 3) as path:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == staged.sha256
        copy = path
    assert not copy.exists()
    assert list(store.staging.iterdir()) == []


async def test_a_missing_object_is_file_not_found_and_leaves_no_copy(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = make_store(s3_server, bucket, tmp_path)
    with pytest.raises(FileNotFoundError):
        async with store.local_copy(uuid.uuid4(), 1):
            pytest.fail("a copy of nothing")
    assert list(store.staging.iterdir()) == []


def test_delete_revisions_keeps_the_newer_ones_and_other_documents(
    s3_server: S3Server, s3: Any, bucket: str, tmp_path: Path
) -> None:
    store = make_store(s3_server, bucket, tmp_path)
    mine, other = uuid.uuid4(), uuid.uuid4()
    for key in (f"{mine}/1", f"{mine}/2", f"{mine}/3", f"{mine}/notes", f"{other}/1"):
        s3.put_object(Bucket=bucket, Key=PREFIX + key, Body=b"x")
    s3.put_object(Bucket=bucket, Key=f"elsewhere/{mine}/1", Body=b"x")  # not under the prefix
    store.delete_revisions(mine, below=3)
    assert keys(s3, bucket, "") == sorted(
        [f"{PREFIX}{mine}/3", f"{PREFIX}{mine}/notes", f"{PREFIX}{other}/1", f"elsewhere/{mine}/1"]
    )
    store.delete(mine)
    assert keys(s3, bucket, "") == sorted([f"{PREFIX}{other}/1", f"elsewhere/{mine}/1"])


def test_a_failed_delete_is_logged_not_raised(
    s3_server: S3Server, bucket: str, tmp_path: Path, logs: CapturedLogs
) -> None:
    store = make_store(s3_server, bucket, tmp_path)
    s3_server.stop()
    document_id = uuid.uuid4()
    store.delete(document_id)  # the rows are gone already: the objects are only orphaned
    left = [e for e in logs.events if e.get("event") == "document_objects_left"]
    assert [e["document_id"] for e in left] == [str(document_id)]


def test_s3_storage_needs_a_bucket() -> None:
    with pytest.raises(ValidationError, match="needs a bucket"):
        DocumentSettings(storage="s3")
    assert DocumentSettings().storage == "local"
