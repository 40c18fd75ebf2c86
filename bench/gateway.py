"""Gateway overhead benchmark: one load, three targets, comparable tables.

What is measured
    The same HTTP load against
      1. ``direct``: a fast OpenAI-compatible mock upstream (no gateway at all),
      2. ``mainsail``: ``POST /v1/chat/completions`` of ``mainsail serve`` with an API key, the
         quota check and usage metering on (fresh embedded PostgreSQL), routed to the mock,
      3. ``litellm``: LiteLLM's proxy (own venv under ``bench/.venvs/litellm``, no database),
         routed to the same mock.
    For each target: requests/s, p50 and p99 latency, errors (non-2xx and socket errors) and,
    for the gateways, the peak resident memory of the server's process tree. The "overhead"
    column is the gateway's p50 minus the direct p50 at the same concurrency and mode.

How
    The mock is a raw asyncio (uvloop) HTTP/1.1 keep-alive server in a child process started
    from this file. Load comes from ``wrk`` with a generated Lua script (POST body, bearer
    token, a ``done()`` hook that prints the results as JSON, a ``response()`` hook that keeps
    the status codes and a sample body of failed requests). Each target and mode gets a 2 s
    warm-up, then one ``wrk -c C -t min(C, 2) -d D`` run per concurrency C. The gateways run
    one at a time (never two under load together), with 1 and then 2 worker processes.
    Everything binds to 127.0.0.1; everything started is stopped at the end (also on Ctrl+C).

Usage (from the repository root)
    .venv/bin/python bench/gateway.py                        # full run, ~15 min
    .venv/bin/python bench/gateway.py --quick --skip-litellm # smoke test, ~1 min
    .venv/bin/python bench/gateway.py --duration 5 --concurrency 1,32 --modes json

Results are printed and written to ``bench/results/gateway-<date>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
WORK_ROOT = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
MAINSAIL_BIN = ROOT / ".venv" / "bin" / "mainsail"
LITELLM_VENV = BENCH_DIR / ".venvs" / "litellm"
LITELLM_VERSION = "1.109.1"

HOST = "127.0.0.1"
MODEL = "bench-model"
MODES = ("json", "stream")
WARMUP_S = 2.0
FULL_DEFAULTS = {"duration": 10.0, "concurrency": (1, 32, 128), "workers": (1, 2)}
QUICK_DEFAULTS = {"duration": 3.0, "concurrency": (1, 32), "workers": (1,)}
BENCH_EMAIL = "bench@example.com"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Mock upstream: canned OpenAI answers from a raw asyncio protocol
# --------------------------------------------------------------------------------------------

_CREATED = 1_700_000_000
_USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
_PIECES = ("Hello", "! How can", " I help?")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')


def _compact(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": _CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(_PIECES)},
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    }


def _chunk(delta: dict[str, str] | None, finish: str | None = None) -> dict[str, Any]:
    """A stream chunk; ``delta=None`` makes the final usage-only chunk."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "choices": [],
    }
    if delta is None:
        chunk["usage"] = _USAGE
    else:
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return chunk


def _stream_response() -> bytes:
    """SSE over chunked transfer encoding: role, 3 text chunks, finish, usage, [DONE]."""
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        *(_chunk({"content": piece}) for piece in _PIECES),
        _chunk({}, finish="stop"),
        _chunk(None),
    ]
    events = [b"data: " + _compact(chunk) + b"\n\n" for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    body = b"".join(f"{len(event):x}\r\n".encode() + event + b"\r\n" for event in events)
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    )
    return head + body + b"0\r\n\r\n"


COMPLETION_RESPONSE = _response("200 OK", "application/json", _compact(_completion()))
STREAM_RESPONSE = _stream_response()
MODELS_RESPONSE = _response(
    "200 OK",
    "application/json",
    _compact({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "mock"}]}),
)
NOT_FOUND_RESPONSE = _response(
    "404 Not Found", "application/json", b'{"error":{"message":"not found"}}'
)


def _route(head: bytes, body: bytes) -> bytes:
    method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0].rstrip(b"/")
    if method == b"POST" and path.endswith(b"/chat/completions"):
        return STREAM_RESPONSE if _STREAM_TRUE.search(body) else COMPLETION_RESPONSE
    if method == b"GET" and path.endswith(b"/models"):
        return MODELS_RESPONSE
    return NOT_FOUND_RESPONSE


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked request body from ``start``: (body, end offset), or None if partial."""
    body, pos = bytearray(), start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            end = buffer.find(b"\r\n", pos)  # no trailers expected
            return None if end < 0 else (bytes(body), end + 2)
        if len(buffer) < pos + size + 2:
            return None
        body += buffer[pos : pos + size]
        pos += size + 2


class MockUpstream(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; every answer is a precomputed byte string."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            request = self._next_request()
            if request is None:
                return
            head, body = request
            self.transport.write(_route(head, body))
            if _CONNECTION_CLOSE.search(head):
                self.transport.close()
                self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _next_request(self) -> tuple[bytes, bytes] | None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(self.buffer[:head_end])
        if _CHUNKED.search(head):
            decoded = _dechunk(self.buffer, head_end + 4)
            if decoded is None:
                return None
            body, end = decoded
        else:
            match = _CONTENT_LENGTH.search(head)
            end = head_end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < end:
                return None
            body = bytes(self.buffer[head_end + 4 : end])
        del self.buffer[:end]
        return head, body


def serve_mock(port: int) -> None:
    """Run the mock upstream until SIGTERM/SIGINT (this is the child process's main)."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(MockUpstream, HOST, port, backlog=4096, reuse_address=True)
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class StartError(Exception):
    """A server or tool could not be prepared: a one-line message, and details (a log tail)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass
class Server:
    """A child process in its own process group, with its output in ``log_path``."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    companion_pidfile: Path | None = None  # e.g. the embedded PostgreSQL's postmaster.pid

    def companion_pid(self) -> int | None:
        if self.companion_pidfile is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(self.companion_pidfile.read_text().split()[0])
        return None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def last_log_line(self) -> str:
        lines = [line.strip() for line in self.log_tail().splitlines() if line.strip()]
        return lines[-1][:200] if lines else "(no output)"

    def stop(self, grace_s: float = 25.0) -> None:
        """SIGTERM to the main process (orderly shutdown), then SIGKILL to what is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_process(
    name: str, argv: Sequence[str | Path], *, cwd: Path, env: dict[str, str], log_path: Path
) -> Server:
    with log_path.open("wb") as output:
        proc = subprocess.Popen(
            [str(arg) for arg in argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, proc, log_path)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        log(f"stopping {server.name}")
        server.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    body: object | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:port; returns (status, body)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        sent.update(headers or {})
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_until_up(server: Server, port: int, path: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            raise StartError(
                f"{server.name} exited with status {server.proc.returncode}: "
                f"{server.last_log_line()}",
                server.log_tail(),
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_request(port, "GET", path, timeout_s=2.0)[0] == 200:
                return
        if time.monotonic() > deadline:
            raise StartError(
                f"{server.name} not ready after {timeout_s:.0f} s: {server.last_log_line()}",
                server.log_tail(),
            )
        time.sleep(0.25)


def error_lines(server: Server, limit: int = 8) -> list[str]:
    """Distinct warning/error lines from a server's log (for the report)."""
    pattern = re.compile(r"error|warn|exception|traceback|critical", re.IGNORECASE)
    seen: dict[str, None] = {}
    with contextlib.suppress(OSError):
        for line in server.log_path.read_text(errors="replace").splitlines():
            if pattern.search(line):
                seen.setdefault(line.strip()[:300], None)
    return list(seen)[:limit]


def start_mock(work_dir: Path) -> tuple[Server, int]:
    port = free_port()
    argv = [sys.executable, Path(__file__).resolve(), "--serve-mock", str(port)]
    server = start_process(
        "mock upstream", argv, cwd=work_dir, env=dict(os.environ), log_path=work_dir / "mock.log"
    )
    wait_until_up(server, port, "/v1/models", timeout_s=20)
    return server, port


# --------------------------------------------------------------------------------------------
# Mainsail
# --------------------------------------------------------------------------------------------


@dataclass
class MainsailHome:
    """A throwaway working directory: catalogue, embedded PostgreSQL, the bench user's key."""

    path: Path
    env: dict[str, str]
    api_key: str | None = None

    @property
    def pg_dir(self) -> Path:
        return self.path / ".mainsail" / "pg"


def make_mainsail_home(work_dir: Path, mock_port: int) -> MainsailHome:
    home = work_dir / "mainsail"
    home.mkdir()
    catalogue = home / "catalogue.toml"
    catalogue.write_text(
        f'[providers.mock]\nkind = "openai"\nbase_url = "http://{HOST}:{mock_port}/v1"\n\n'
        f'[models.{MODEL}]\nprovider = "mock"\nmodel = "{MODEL}"\n'
        "input_per_mtok = 0.15\noutput_per_mtok = 0.60\n"
        "context_window = 16000\nmax_output_tokens = 256\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
    env.update(
        {
            "MAINSAIL_ENVIRONMENT": "production",
            "MAINSAIL_DATA_DIR": str(home / ".mainsail"),
            "MAINSAIL_DATABASE__EMBEDDED_DIR": str(home / ".mainsail" / "pg"),
            "MAINSAIL_LLM__USE_STANDARD_ENV": "false",
            "MAINSAIL_LLM__CATALOGUE_FILE": str(catalogue),
            "MAINSAIL_LOG__LEVEL": "WARNING",
            "MAINSAIL_AUTH__JWT_SECRET": secrets.token_hex(32),
            "MAINSAIL_AUTH__ARGON2_MEMORY_KIB": "1024",
            "MAINSAIL_AUTH__ARGON2_TIME_COST": "1",
            "MAINSAIL_AUTH__ARGON2_PARALLELISM": "1",
            # The limiter stays on (its cost is part of the figure) with room for the load.
            "MAINSAIL_RATE_LIMIT__USER": "1000000/minute",
            # Every request goes upstream: the response cache would answer repeats for free.
            "MAINSAIL_RESPONSE_CACHE__ENABLED": "false",
        }
    )
    return MainsailHome(home, env)


def start_mainsail(home: MainsailHome, workers: int) -> tuple[Server, int]:
    port = free_port()
    argv = [MAINSAIL_BIN, "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    log_path = home.path / f"serve-w{workers}.log"
    server = start_process(
        f"mainsail (w={workers})", argv, cwd=home.path, env=home.env, log_path=log_path
    )
    server.companion_pidfile = home.pg_dir / "postmaster.pid"
    try:
        wait_until_up(server, port, "/ready", timeout_s=180)
    except BaseException:
        server.stop()
        raise
    return server, port


def ensure_api_key(home: MainsailHome, port: int) -> str:
    """Create the bench user (once per home), sign in, and create an API key."""
    if home.api_key is not None:
        return home.api_key
    password = secrets.token_urlsafe(18)
    created = subprocess.run(
        [str(MAINSAIL_BIN), "users", "create", "--email", BENCH_EMAIL, "--password-stdin"],
        cwd=home.path,
        env=home.env,
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if created.returncode != 0:
        raise StartError(f"mainsail users create failed: {created.stderr.strip()}")
    status, body = http_request(
        port, "POST", "/auth/login", body={"email": BENCH_EMAIL, "password": password}
    )
    if status != 200:
        raise StartError(f"POST /auth/login answered {status}: {body[:300]!r}")
    access = json.loads(body)["access_token"]
    status, body = http_request(
        port,
        "POST",
        "/me/api-keys",
        body={"name": "bench"},
        headers={"Authorization": f"Bearer {access}"},
    )
    if status != 201:
        raise StartError(f"POST /me/api-keys answered {status}: {body[:300]!r}")
    home.api_key = str(json.loads(body)["key"])
    return home.api_key


# --------------------------------------------------------------------------------------------
# LiteLLM
# --------------------------------------------------------------------------------------------

_REQUIREMENTS_SNIPPET = """
import importlib.metadata as m
from pip._vendor.packaging.requirements import Requirement
for text in m.requires("litellm") or []:
    req = Requirement(text)
    if req.marker is None or req.marker.evaluate({"extra": "proxy"}):
        req.marker = None
        print(req)
"""


def litellm_bin(name: str) -> Path:
    return LITELLM_VENV / "bin" / name


def litellm_version() -> str | None:
    python = litellm_bin("python")
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(litellm_bin("python")), "-m", "pip", "install", "--quiet", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)


def _unsatisfiable(pip_output: str) -> str | None:
    match = re.search(r"No matching distribution found for ([A-Za-z0-9_.\-]+)", pip_output)
    return _requirement_name(match.group(1)) if match else None


def _requirement_name(requirement: str) -> str:
    """``httpx[http2]>=0.28`` -> ``httpx`` (lower case, ``_`` as ``-``)."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _install_relaxed() -> list[str]:
    """Install litellm without deps, then its proxy deps, dropping the version pin of each
    dependency the package index cannot satisfy. Returns the relaxed names."""
    result = _pip("--no-deps", f"litellm=={LITELLM_VERSION}")
    if result.returncode != 0:
        raise StartError(f"pip install litellm=={LITELLM_VERSION} failed: {result.stderr[-500:]}")
    listed = subprocess.run(
        [str(litellm_bin("python")), "-c", _REQUIREMENTS_SNIPPET],
        capture_output=True,
        text=True,
        check=True,
    )
    requirements = listed.stdout.split()
    relaxed: list[str] = []
    for _ in range(8):
        result = _pip(*requirements)
        if result.returncode == 0:
            return relaxed
        name = _unsatisfiable(result.stderr)
        if name is None or name in relaxed:
            break
        relaxed.append(name)
        requirements = [
            _requirement_name(req) if _requirement_name(req) == name else req
            for req in requirements
        ]
    raise StartError(f"pip could not install LiteLLM's dependencies: {result.stderr[-500:]}")


def ensure_litellm() -> str:
    """Install LiteLLM into its own venv unless a complete install is there; returns a note
    on how it was installed (the marker file is written only after pip succeeded)."""
    marker = LITELLM_VENV / ".bench-installed"
    if marker.exists() and litellm_version() == LITELLM_VERSION:
        return marker.read_text().strip()
    python311 = shutil.which("python3.11") or sys.executable
    log(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (a few minutes)")
    if not litellm_bin("python").exists():
        subprocess.run([python311, "-m", "venv", str(LITELLM_VENV)], check=True)
    result = _pip(f"litellm[proxy]=={LITELLM_VERSION}")
    note = "pip install litellm[proxy]"
    if result.returncode != 0:
        missing = _unsatisfiable(result.stderr)
        if missing is None:
            raise StartError(f"pip install failed: {result.stderr.strip()[-500:]}")
        log(f"pip: no distribution for {missing}; retrying with unsatisfiable pins relaxed")
        relaxed = _install_relaxed()
        note = "pip install with pins the package index cannot meet relaxed: " + ", ".join(relaxed)
    marker.write_text(note + "\n")
    return note


def litellm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env.update(
        {
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the cost map from GitHub
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
            "DISABLE_ADMIN_UI": "True",
            "NO_DOCS": "True",
            "NO_REDOC": "True",
        }
    )
    return env


def write_litellm_config(work_dir: Path, mock_port: int, master_key: str) -> Path:
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"http://{HOST}:{mock_port}/v1",
                    "api_key": "sk-mock",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "set_verbose": False,
            "json_logs": False,
            "drop_params": True,
            "request_timeout": 60,
        },
        "general_settings": {"master_key": master_key},
    }
    path = work_dir / "litellm.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    return path


def start_litellm(config: Path, workers: int, work_dir: Path) -> tuple[Server, int]:
    port = free_port()
    argv = [
        litellm_bin("litellm"),
        "--config",
        config,
        "--host",
        HOST,
        "--port",
        str(port),
        "--num_workers",
        str(workers),
    ]
    server = start_process(
        f"litellm (w={workers})",
        argv,
        cwd=work_dir,
        env=litellm_env(),
        log_path=work_dir / f"litellm-w{workers}.log",
    )
    try:
        wait_until_up(server, port, "/health/liveliness", timeout_s=240)
    except BaseException:
        server.stop()
        raise
    return server, port


# --------------------------------------------------------------------------------------------
# Load: wrk + Lua, memory sampling
# --------------------------------------------------------------------------------------------

LUA_TEMPLATE = r"""-- generated by bench/gateway.py
wrk.method = "POST"
wrk.body = [==[@BODY@]==]
wrk.headers["Content-Type"] = "application/json"
@AUTH@
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  codes = {}
  sample = ""
end

function response(status, headers, body)
  if status > 299 then
    local key = tostring(status)
    codes[key] = (codes[key] or 0) + 1
    if sample == "" and body then
      sample = string.sub(body, 1, 400)
    end
  end
end

local function quote(text)
  local escaped = string.gsub(text, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

function done(summary, latency, requests)
  local totals, samples, statuses = {}, {}, {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("codes") or {}) do
      totals[status] = (totals[status] or 0) + count
    end
    local text = thread:get("sample")
    if text and text ~= "" then
      table.insert(samples, quote(text))
    end
  end
  for status, count in pairs(totals) do
    table.insert(statuses, string.format('"%s":%.0f', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p99_us":%.0f,' ..
    '"statuses":{%s},"samples":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99),
    table.concat(statuses, ","), table.concat(samples, ",")))
end
"""


@dataclass
class Target:
    name: str
    port: int
    token: str | None = None
    server: Server | None = None


def request_body(mode: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 32,
    }
    if mode == "stream":
        body.update({"stream": True, "stream_options": {"include_usage": True}})
    return body


def write_lua(work_dir: Path, target: Target, mode: str) -> Path:
    auth = (
        "" if target.token is None else f'wrk.headers["Authorization"] = "Bearer {target.token}"\n'
    )
    script = LUA_TEMPLATE.replace("@BODY@", json.dumps(request_body(mode))).replace("@AUTH@", auth)
    path = work_dir / f"{target.name}-{mode}.lua"
    path.write_text(script)
    return path


def probe(target: Target, mode: str) -> str | None:
    """One request, like curl; None when it answered 200 (and a complete stream)."""
    headers = {} if target.token is None else {"Authorization": f"Bearer {target.token}"}
    try:
        status, body = http_request(
            target.port, "POST", "/v1/chat/completions", body=request_body(mode), headers=headers
        )
    except (OSError, http.client.HTTPException) as exc:
        return f"probe failed: {exc}"
    if status != 200:
        return f"probe answered {status}: {body[:200].decode(errors='replace')}"
    if mode == "stream" and b"[DONE]" not in body:
        return f"probe stream did not end with [DONE]: {body[-200:].decode(errors='replace')}"
    return None


def tree_memory(pid: int | None, *, pss: bool = False) -> int:
    """Sum of RSS (or PSS: shared pages split between their users) in bytes of a process and
    all its descendants; 0 if it is gone."""
    if pid is None:
        return 0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss if pss else process.memory_info().rss
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def wait_until_idle(server: Server | None, *, timeout_s: float = 10.0) -> None:
    """Let a gateway finish the requests a previous load left queued (wrk closes its
    connections, the server still works them off) before the next cell starts."""
    if server is None:
        return
    interval_s, deadline = 0.5, time.monotonic() + timeout_s
    last = tree_cpu_s(server.proc.pid)
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = tree_cpu_s(server.proc.pid)
        if now - last < 0.1 * interval_s:  # under 10 % of a core
            return
        last = now


class PeakRss:
    """Samples the RSS of a server tree (and its companion, e.g. PostgreSQL) in a thread."""

    def __init__(
        self,
        server: Server | None,
        interval_s: float = 0.25,
        *,
        companion_interval_s: float | None = None,
    ) -> None:
        """``companion_interval_s``: sample the companion's PSS less often than the server's
        RSS. Reading PostgreSQL's memory maps costs several ms of CPU each time, taken from
        the cores the measured service runs on; RSS is a cheap read."""
        self.server = server
        self.interval_s = interval_s
        self.companion_interval_s = companion_interval_s or interval_s
        self.peak = 0
        self.companion_peak = 0
        self._companion_due = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, *, companion: bool = True) -> None:
        if self.server is None:
            return
        self.peak = max(self.peak, tree_memory(self.server.proc.pid))
        if companion or time.monotonic() >= self._companion_due:
            self._companion_due = time.monotonic() + self.companion_interval_s
            pss = tree_memory(self.server.companion_pid(), pss=True)
            self.companion_peak = max(self.companion_peak, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample(companion=False)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class LoadResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: str = ""
    peak_rss_mib: float | None = None
    companion_rss_mib: float | None = None


def _describe_errors(data: dict[str, Any]) -> str:
    parts = [f"HTTP {code} x{count}" for code, count in sorted(data["statuses"].items())]
    parts += [f"socket {kind} x{data[kind]}" for kind in ("connect", "read", "write") if data[kind]]
    if data["timeout"]:
        parts.append(f"timeout x{data['timeout']}")
    if data["samples"]:
        parts.append("sample body: " + data["samples"][0].replace("\n", " ")[:300])
    return "; ".join(parts)


def parse_wrk(output: str) -> LoadResult:
    line = next((ln for ln in output.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise StartError(f"wrk printed no result: {output.strip()[-500:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(int(data[kind]) for kind in ("connect", "read", "write", "status", "timeout"))
    duration_s = max(float(data["duration_us"]) / 1e6, 1e-9)
    return LoadResult(
        requests=int(data["requests"]),
        rps=float(data["requests"]) / duration_s,
        p50_ms=float(data["p50_us"]) / 1000,
        p99_ms=float(data["p99_us"]) / 1000,
        errors=errors,
        error_detail=_describe_errors(data) if errors else "",
    )


def run_wrk(
    wrk: str, target: Target, script: Path, concurrency: int, duration_s: float
) -> LoadResult:
    threads = min(concurrency, 2)
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://{HOST}:{target.port}/v1/chat/completions",
    ]
    with PeakRss(target.server) as memory:
        done = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=duration_s + 60
        )
    result = parse_wrk(done.stdout + done.stderr)
    if target.server is not None:
        result.peak_rss_mib = memory.peak / 2**20
        result.companion_rss_mib = memory.companion_peak / 2**20 or None
    return result


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found; trying apt-get install -y wrk")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "install", "-y", "wrk"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "wrk"],
    ):
        subprocess.run(argv, env=apt_env, capture_output=True, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "bench/gateway.py needs wrk (https://github.com/wg/wrk); `apt-get install wrk` failed. "
        "Install it and run again."
    )


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    target: str
    mode: str
    concurrency: int
    workers: int | None  # None: direct (no gateway)
    result: LoadResult | None = None
    note: str = ""


@dataclass
class Config:
    duration_s: float
    concurrency: tuple[int, ...]
    workers: tuple[int, ...]
    modes: tuple[str, ...]
    skip_litellm: bool
    keep_work: bool


@dataclass
class Run:
    config: Config
    wrk: str
    work_dir: Path
    cells: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_errors: dict[str, list[str]] = field(default_factory=dict)
    litellm_note: str = ""
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    completed: Counter[str] = field(default_factory=Counter)  # responses wrk/probes received
    cut_off: Counter[str] = field(default_factory=Counter)  # requests in flight as wrk stopped

    def measure(self, target: Target, workers: int | None) -> None:
        """Warm up, then one wrk run per concurrency, for every mode."""
        for mode in self.config.modes:
            problem = probe(target, mode)
            if problem is not None:
                log(f"{target.name} {mode}: not measured: {problem}")
                self.skip(target.name, mode, workers, problem)
                continue
            self.completed[target.name] += 1
            script = write_lua(self.work_dir, target, mode)
            warm_c = max(self.config.concurrency)
            log(f"{target.name} {mode}: warm-up {WARMUP_S:.0f} s at c={warm_c}")
            with contextlib.suppress(StartError, subprocess.TimeoutExpired):
                warm = run_wrk(self.wrk, target, script, warm_c, WARMUP_S)
                self.completed[target.name] += warm.requests
                self.cut_off[target.name] += warm_c
            for concurrency in self.config.concurrency:
                self.cells.append(self.one_cell(target, script, mode, concurrency, workers))

    def one_cell(
        self, target: Target, script: Path, mode: str, concurrency: int, workers: int | None
    ) -> Cell:
        cell = Cell(target.name, mode, concurrency, workers)
        wait_until_idle(target.server)
        try:
            cell.result = run_wrk(self.wrk, target, script, concurrency, self.config.duration_s)
        except (StartError, subprocess.TimeoutExpired) as exc:
            cell.note = f"not measured: {exc}"
            log(f"{target.name} {mode} c={concurrency}: {cell.note}")
            return cell
        r = cell.result
        self.completed[target.name] += r.requests
        self.cut_off[target.name] += concurrency
        log(
            f"{target.name} w={workers or '-'} {mode} c={concurrency}: {r.rps:,.0f} req/s, "
            f"p50 {_ms(r.p50_ms)} ms, p99 {_ms(r.p99_ms)} ms, errors {r.errors}"
            + (f" ({r.error_detail})" if r.errors else "")
        )
        return cell

    def skip(self, target: str, mode: str | None, workers: int | None, reason: str) -> None:
        reason = "not measured: " + " ".join(reason.split())[:300]
        for each in self.config.modes if mode is None else (mode,):
            for concurrency in self.config.concurrency:
                self.cells.append(Cell(target, each, concurrency, workers, note=reason))

    def start_failed(self, target: str, workers: int, exc: StartError) -> None:
        log(f"{target} (w={workers}) not measured: {exc}")
        self.skip(target, None, workers, str(exc))
        if exc.detail:
            self.server_errors[f"{target} (w={workers}) start"] = exc.detail.splitlines()

    def keep_server_errors(self, server: Server) -> None:
        lines = error_lines(server)
        if lines:
            self.server_errors[server.name] = lines


def bench_mainsail(run: Run, home: MainsailHome, workers: int) -> None:
    log(f"starting mainsail with {workers} worker(s)")
    try:
        server, port = start_mainsail(home, workers)
    except StartError as exc:
        run.start_failed("mainsail", workers, exc)
        return
    with running(server):
        try:
            key = ensure_api_key(home, port)
        except (StartError, OSError, http.client.HTTPException) as exc:
            log(f"mainsail (w={workers}) not measured: {exc}")
            run.skip("mainsail", None, workers, str(exc))
            return
        run.measure(Target("mainsail", port, key, server), workers)
        run.notes.append(metering_check(run, server, port, key))
    run.keep_server_errors(server)


def metering_check(run: Run, server: Server, port: int, key: str) -> str:
    """Compare what Mainsail metered (GET /me/usage) with the responses the load received."""
    wait_until_idle(server)
    time.sleep(1.0)  # the usage writer flushes every 0.5 s
    try:
        status, body = http_request(
            port, "GET", "/me/usage", headers={"Authorization": f"Bearer {key}"}
        )
    except (OSError, http.client.HTTPException) as exc:
        return f"Metering check ({server.name}): GET /me/usage failed: {exc}"
    if status != 200:
        return f"Metering check ({server.name}): GET /me/usage answered {status}: {body[:200]!r}"
    totals = json.loads(body)["totals"]
    metered, received = int(totals["requests"]), run.completed["mainsail"]
    return (
        f"Metering check after {server.name}: /me/usage counts {metered:,} requests "
        f"(${totals['cost_usd']}) this month, the load received {received:,} responses "
        f"(all Mainsail runs so far, warm-ups and probes included): {metered - received:+,}. "
        f"wrk stopped with up to {run.cut_off['mainsail']:,} requests in flight, which Mainsail "
        "still serves and meters after the client has gone."
    )


def bench_litellm(run: Run, config: Path | None, workers: int) -> None:
    if config is None:
        run.skip("litellm", None, workers, run.litellm_note)
        return
    log(f"starting litellm with {workers} worker(s)")
    master_key = json.loads(config.read_text())["general_settings"]["master_key"]
    try:
        server, port = start_litellm(config, workers, run.work_dir)
    except StartError as exc:
        run.start_failed("litellm", workers, exc)
        return
    with running(server):
        run.measure(Target("litellm", port, master_key, server), workers)
    run.keep_server_errors(server)


def prepare_litellm(run: Run, mock_port: int) -> Path | None:
    """The LiteLLM config, or None (with ``run.litellm_note`` saying why)."""
    if run.config.skip_litellm:
        run.litellm_note = "skipped by --skip-litellm"
        return None
    try:
        run.litellm_note = ensure_litellm()
    except (StartError, OSError, subprocess.SubprocessError) as exc:
        run.litellm_note = f"LiteLLM could not be installed: {exc}"
        log(run.litellm_note)
        return None
    return write_litellm_config(run.work_dir, mock_port, "sk-bench-" + secrets.token_hex(16))


def execute(run: Run) -> None:
    mock, mock_port = start_mock(run.work_dir)
    with running(mock):
        run.measure(Target("direct", mock_port), None)
        home = make_mainsail_home(run.work_dir, mock_port)
        litellm_config = prepare_litellm(run, mock_port)
        for workers in run.config.workers:
            bench_mainsail(run, home, workers)
            bench_litellm(run, litellm_config, workers)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

TARGET_ORDER = ("direct", "mainsail", "litellm")
TABLE_HEAD = (
    "| target | concurrency | req/s | p50 ms | p99 ms | errors "
    "| overhead p50 vs direct (ms) | peak RSS MiB |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)


def find_cell(
    cells: list[Cell], target: str, mode: str, c: int, workers: int | None
) -> Cell | None:
    for cell in cells:
        if (cell.target, cell.mode, cell.concurrency) == (target, mode, c) and (
            target == "direct" or cell.workers == workers
        ):
            return cell
    return None


def _ms(value: float, *, signed: bool = False) -> str:
    """Milliseconds with 3 decimals below 1 ms, else 2."""
    sign = "+" if signed else ""
    return f"{value:{sign}.3f}" if abs(value) < 1 else f"{value:{sign}.2f}"


def _rss_text(result: LoadResult) -> str:
    if result.peak_rss_mib is None:
        return "-"
    text = f"{result.peak_rss_mib:,.0f}"
    if result.companion_rss_mib:
        text += f" (+PG {result.companion_rss_mib:,.0f} PSS)"
    return text


def table_row(cell: Cell, direct: Cell | None) -> str:
    name = cell.target if cell.workers is None else f"{cell.target} (w={cell.workers})"
    r = cell.result
    if r is None:
        return (
            f"| {name} | {cell.concurrency} | {cell.note or 'not measured'} | - | - | - | - | - |"
        )
    overhead = "-"
    if cell.target != "direct" and direct is not None and direct.result is not None:
        overhead = _ms(r.p50_ms - direct.result.p50_ms, signed=True)
    return (
        f"| {name} | {cell.concurrency} | {r.rps:,.0f} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} "
        f"| {r.errors} | {overhead} | {_rss_text(r)} |"
    )


def render_table(run: Run, workers: int, mode: str) -> str:
    rows = []
    for c in run.config.concurrency:
        direct = find_cell(run.cells, "direct", mode, c, None)
        for target in TARGET_ORDER:
            cell = find_cell(run.cells, target, mode, c, workers)
            if cell is not None:
                rows.append(table_row(cell, direct))
    title = f"### {workers} worker(s), {'streaming (SSE)' if mode == 'stream' else 'JSON'}"
    return "\n".join([title, "", TABLE_HEAD, *rows])


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def summary_rows(run: Run, workers: int, mode: str) -> list[str]:
    def result(target: str, c: int) -> LoadResult | None:
        cell = find_cell(run.cells, target, mode, c, workers)
        return None if cell is None else cell.result

    ms32, ll32 = result("mainsail", 32), result("litellm", 32)
    if ms32 and ll32 and ll32.rps > 0:
        ratio = ms32.rps / ll32.rps
        speed = (f"{ratio:.1f}x ({ms32.rps:,.0f} vs {ll32.rps:,.0f} req/s)", ratio >= 20)
    else:
        speed = ("not measured", None)
    ms1, d1 = result("mainsail", 1), result("direct", 1)
    if ms1 and d1:
        added = ms1.p50_ms - d1.p50_ms
        latency = (f"{added:+.2f} ms ({ms1.p50_ms:.2f} vs {d1.p50_ms:.2f})", added <= 1.5)
    else:
        latency = ("not measured", None)
    ms128 = result("mainsail", 128)
    errors = (str(ms128.errors), ms128.errors == 0) if ms128 else ("not measured", None)
    checks = [
        ("Mainsail req/s ÷ LiteLLM req/s at c=32", speed, ">= 20x"),
        ("Mainsail added p50 at c=1", latency, "<= 1.5 ms"),
        ("Mainsail errors at c=128", errors, "0"),
    ]
    return [
        f"| {workers} | {mode} | {label} | {value} | {goal} | {_verdict(ok)} |"
        for label, (value, ok), goal in checks
    ]


def render_summary(run: Run) -> str:
    rows = [
        row
        for workers in run.config.workers
        for mode in run.config.modes
        for row in summary_rows(run, workers, mode)
    ]
    head = "| workers | mode | check | value | target | verdict |\n|---:|---|---|---|---|---|"
    return "\n".join(["## Targets", "", head, *rows])


BACKTICK, QUOTE = "`", "'"


def render_errors(run: Run) -> str:
    lines = [
        f"- {cell.target} w={cell.workers or '-'} {cell.mode} c={cell.concurrency}: "
        f"{cell.result.errors} errors: {cell.result.error_detail}"
        for cell in run.cells
        if cell.result is not None and cell.result.errors
    ]
    for name, log_lines in run.server_errors.items():
        lines.append(f"- {name} log (warnings/errors, distinct, first {len(log_lines)}):")
        lines += [f"    - `{line.replace(BACKTICK, QUOTE)}`" for line in log_lines]
    return "\n".join(["## Errors", "", *(lines or ["none"])])


def machine_facts(run: Run) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = (
        subprocess.run([run.wrk, "-v"], capture_output=True, text=True, check=False)
        .stdout.split("[")[0]
        .strip()
    )
    facts = {
        "CPU": f"{cpu}; {os.cpu_count()} logical cores, {psutil.cpu_count(logical=False)} physical",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average before the run": " ".join(f"{x:.2f}" for x in run.load_at_start),
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "mainsail": importlib.metadata.version("mainsail"),
        "litellm": f"{litellm_version() or 'not installed'} ({run.litellm_note})",
        "load generator": wrk_version or "wrk",
        "settings": (
            f"duration {run.config.duration_s:g} s per cell after a {WARMUP_S:g} s warm-up; "
            f"wrk -t min(c, 2); concurrency {', '.join(map(str, run.config.concurrency))}"
        ),
    }
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


NOTES = [
    "Everything runs on this one machine: wrk, the mock, the gateway (and its PostgreSQL) "
    "share the same cores, so absolute numbers are lower than on a dedicated box; the "
    "ratios are what to compare.",
    "`direct` is measured once per mode and repeated in each worker table; its overhead is "
    "the reference (0).",
    "Mainsail runs with MAINSAIL_RATE_LIMIT__USER=1000000/minute (the limiter on, with room for "
    "the load), MAINSAIL_LOG__LEVEL=WARNING (request logging costs time; uvicorn's "
    "access log is off in `mainsail serve`), MAINSAIL_ENVIRONMENT=production, quota and "
    "metering on (user budget $25/month). LiteLLM runs with LITELLM_LOG=ERROR, no database, "
    "telemetry off.",
    "Peak RSS: the sum of RSS over the server's process tree (supervisor + workers), sampled "
    "every 0.25 s during the cell; for Mainsail, `+PG` is the embedded PostgreSQL's tree as "
    "PSS (RSS would count its shared buffers once per backend).",
    "Before each cell the gateway is left to work off what the previous load queued (until "
    "its processes use under 10 % of a core, at most 10 s).",
    "Errors: wrk's non-2xx/3xx responses plus socket connect/read/write errors and timeouts "
    "(10 s).",
]


def render_report(run: Run, started: dt.datetime, interrupted: bool) -> str:
    parts = [
        f"# Gateway benchmark, {started:%Y-%m-%d %H:%M}"
        + (" (interrupted)" if interrupted else ""),
        "",
        "## Machine",
        "",
        machine_facts(run),
        "",
        "## Results",
    ]
    for workers in run.config.workers:
        for mode in run.config.modes:
            parts += ["", render_table(run, workers, mode)]
    parts += ["", render_summary(run), "", render_errors(run), "", "## Notes", ""]
    parts += [f"- {note}" for note in [*NOTES, *run.notes]]
    return "\n".join(parts) + "\n"


def write_results(text: str, started: dt.datetime) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"gateway-{started:%Y-%m-%d}.md"
    suffix = 2
    while path.exists():
        path = RESULTS_DIR / f"gateway-{started:%Y-%m-%d}-{suffix}.md"
        suffix += 1
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,32,128, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers")
    return values


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = set(modes) - set(MODES)
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return modes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark a mock upstream directly, Mainsail and LiteLLM under one load."
    )
    parser.add_argument("--duration", type=float, help="seconds per cell (default 10)")
    parser.add_argument("--concurrency", type=_int_list, help="connections (default 1,32,128)")
    parser.add_argument("--workers", type=_int_list, help="gateway worker counts (default 1,2)")
    parser.add_argument("--modes", type=_modes, default=MODES, help="json,stream (default both)")
    parser.add_argument("--skip-litellm", action="store_true", help="measure LiteLLM not at all")
    parser.add_argument(
        "--quick", action="store_true", help="duration 3, concurrency 1,32, workers 1"
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep bench/.work/run-* (logs, database)"
    )
    parser.add_argument("--serve-mock", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    return Config(
        duration_s=args.duration or cast(float, defaults["duration"]),
        concurrency=args.concurrency or cast(tuple[int, ...], defaults["concurrency"]),
        workers=args.workers or cast(tuple[int, ...], defaults["workers"]),
        modes=args.modes,
        skip_litellm=args.skip_litellm,
        keep_work=args.keep_work,
    )


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_mock:
        serve_mock(args.serve_mock)
        return 0
    config = make_config(args)
    wrk = ensure_wrk()
    signal.signal(signal.SIGTERM, _terminate)
    started = dt.datetime.now()
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work_dir = WORK_ROOT / f"run-{started:%Y%m%d-%H%M%S}"
    work_dir.mkdir()
    run = Run(config, wrk, work_dir)
    interrupted = False
    try:
        execute(run)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; everything started has been stopped")
    finally:
        if not config.keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    report = render_report(run, started, interrupted)
    print(report)
    log(f"results written to {write_results(report, started).relative_to(ROOT)}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
