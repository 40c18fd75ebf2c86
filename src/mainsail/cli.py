"""The ``mainsail`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn, TypeVar

import typer
from alembic.util import CommandError
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from mainsail import __version__
from mainsail.core import embedded_pg, migrations
from mainsail.core.errors import AppError
from mainsail.core.logging import configure_logging, get_logger
from mainsail.core.principal import Role
from mainsail.identity.emails import normalize_email
from mainsail.identity.schemas import UserAdminUpdate, UserOut
from mainsail.llm.catalogue import check_catalogue
from mainsail.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="mainsail",
    help="Mainsail: a self-hosted AI backend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(help="Apply or inspect database migrations.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")
users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")

log = get_logger("mainsail.cli")
T = TypeVar("T")

# What a database that cannot be reached raises through Alembic and asyncpg.
_UNREACHABLE = (OSError, TimeoutError, DBAPIError)


def fail(message: str, *, code: int = 1) -> NoReturn:
    typer.echo(f"mainsail: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit(*, quiet: bool = True) -> Settings:
    """Settings from the environment, or a one-line failure. One-shot commands (quiet) log
    warnings and errors only, unless MAINSAIL_LOG__LEVEL asks for more."""
    try:
        settings = load_settings()
        check_catalogue(settings.llm)
    except SettingsError as exc:
        fail(str(exc), code=2)
    log_settings = settings.log
    if quiet and "MAINSAIL_LOG__LEVEL" not in os.environ:
        log_settings = log_settings.model_copy(update={"level": "WARNING"})
    configure_logging(log_settings)
    return settings


@contextmanager
def database_url(settings: Settings) -> Iterator[URL]:
    """The configured database, or the embedded server (joined if already running)."""
    url = settings.async_database_url()
    if url is not None:
        yield url
        return
    try:
        server = embedded_pg.attach(settings.embedded_dir(), settings.database)
    except embedded_pg.EmbeddedDatabaseError as exc:
        fail(str(exc))
    with server:
        yield server.url


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _describe_unreachable(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and not isinstance(exc, OperationalError | InterfaceError):
        return f"the database refused the operation ({type(exc.orig).__name__})"
    return f"the database is unreachable ({type(exc).__name__})"


def ensure_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = (
                "address already in use"
                if exc.errno == errno.EADDRINUSE
                else (exc.strerror or str(exc))
            )
            fail(f"cannot listen on {host}:{port}: {reason} (choose another with --port)")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind [MAINSAIL_HTTP__HOST]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to bind [MAINSAIL_HTTP__PORT]")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes")] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development)")] = False,
    migrate: Annotated[bool, typer.Option(help="Apply pending migrations first")] = True,
) -> None:
    """Start the HTTP API."""
    import uvicorn

    settings = settings_or_exit(quiet=False)
    host = host or settings.http.host
    port = port or settings.http.port
    ensure_port_free(host, port)
    # uvicorn re-raises the signal that stopped it once it has shut down; make SIGTERM a
    # normal exit so the embedded database below is released and stopped cleanly.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with database_url(settings) as url, contextlib.suppress(KeyboardInterrupt):
        if migrate:
            try:
                migrations.upgrade(url)
            except _UNREACHABLE as exc:
                # Start anyway: /ready reports the database until it is back.
                log.warning("migrations_skipped", reason=_describe_unreachable(exc))
        log.info("serving", host=host, port=port, workers=workers)
        uvicorn.run(
            "mainsail.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=None if reload else workers,
            reload=reload,
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=int(settings.http.graceful_shutdown_s),
        )


@app.command()
def worker(
    migrate: Annotated[bool, typer.Option(help="Apply pending migrations first")] = True,
) -> None:
    """Run background jobs (ingestion) without serving HTTP, until SIGTERM or Ctrl-C: a Celery
    worker on MAINSAIL_JOBS__CELERY_BROKER_URL when MAINSAIL_JOBS__EXECUTOR=celery, else a
    process that claims jobs from the database itself."""
    from mainsail.worker import run_celery_worker, run_worker

    settings = settings_or_exit(quiet=False)
    with database_url(settings) as url:
        if migrate:
            _run_migration(lambda: migrations.upgrade(url))
        if settings.jobs.executor == "celery":
            run_celery_worker(settings, url)
        else:
            asyncio.run(run_worker(settings, url))


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or globs")],
    url: Annotated[
        str, typer.Option(envvar="MAINSAIL_URL", help="The running service")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="MAINSAIL_API_KEY", help="An API key with documents:write")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection for every file")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Tokens per chunk")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Tokens shared by neighbours")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every file is ingested")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for ingestion")] = 3600.0,
) -> None:
    """Upload documents through the API, with progress and a summary."""
    import time

    from rich.console import Console

    from mainsail.uploader import expand, summary
    from mainsail.uploader import ingest as run_ingest

    if not api_key:
        fail("an API key is needed: --api-key or MAINSAIL_API_KEY", code=2)
    files, missing = expand(paths)
    if not files:
        fail("no files found at " + ", ".join(paths), code=2)
    console = Console(stderr=True)
    started = time.monotonic()
    items = missing + run_ingest(
        files,
        url=url.rstrip("/"),
        api_key=api_key,
        collection=collection,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        wait=wait,
        timeout_s=timeout,
        console=console,
    )
    Console().print(summary(items, time.monotonic() - started))
    if any(item.outcome in ("refused", "missing", "failed", "timeout") for item in items):
        raise typer.Exit(1)


@migrate_app.command("upgrade")
def migrate_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Upgrade the schema (to the newest revision by default)."""
    settings = settings_or_exit()
    with database_url(settings) as url:
        _run_migration(lambda: migrations.upgrade(url, revision))
    typer.echo(f"database upgraded to {revision}")


# "-1" is a revision (one step back), not an option.
@migrate_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def migrate_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base")],
) -> None:
    """Downgrade the schema to an earlier revision."""
    settings = settings_or_exit()
    with database_url(settings) as url:
        _run_migration(lambda: migrations.downgrade(url, revision))
    typer.echo(f"database downgraded to {revision}")


@migrate_app.command("current")
def migrate_current() -> None:
    """Print the revision the database is at, and whether that is the newest."""
    from mainsail.core.db import Database

    settings = settings_or_exit()
    with database_url(settings) as url:

        async def read() -> str | None:
            db = Database(url, settings.database)
            try:
                return await db.current_revision()
            finally:
                await db.dispose()

        current = _run_migration(lambda: asyncio.run(read()))
    heads = migrations.head_revisions()
    state = "head" if current in heads else f"behind head {', '.join(sorted(heads))}"
    typer.echo(f"{current or 'base'} ({state})")


@migrate_app.command("revision")
def migrate_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the migration does")],
    autogenerate: Annotated[bool, typer.Option(help="Diff the models against the DB")] = True,
) -> None:
    """Create a new migration script (for developers of Mainsail)."""
    settings = settings_or_exit()
    with database_url(settings) as url:
        _run_migration(
            lambda: migrations.revision(message=message, autogenerate=autogenerate, url=url)
        )


def _run_migration(action: Callable[[], T]) -> T:
    try:
        return action()
    except _UNREACHABLE as exc:
        fail(_describe_unreachable(exc))
    except CommandError as exc:  # a revision that does not exist, or cannot be reached
        fail(str(exc), code=2)


def _in_unit_of_work(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one committed transaction; domain errors become one-line failures."""
    from mainsail.core.db import Database

    async def run(url: URL) -> T:
        db = Database(url, settings.database)
        try:
            current = await db.current_revision()
            if current not in migrations.head_revisions():
                fail(
                    f"the database schema is at {current or 'base'}, not the newest revision; "
                    "run `mainsail migrate upgrade` first"
                )
            async with db.unit_of_work() as session:
                return await work(session)
        finally:
            await db.dispose()

    with database_url(settings) as url:
        try:
            return _run_migration(lambda: asyncio.run(run(url)))
        except AppError as exc:
            fail(exc.detail)


def _email_or_exit(value: str) -> str:
    try:
        return normalize_email(value)
    except ValueError as exc:
        fail(f"invalid email {value!r}: {exc}", code=2)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("no password on standard input", code=2)
        return password
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The account's email address")],
    role: Annotated[Role, typer.Option(help="user or admin")] = Role.USER,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create an account (the first admin, typically). The password is prompted for, or read
    from standard input; it is never taken from the command line."""
    from mainsail.identity import service
    from mainsail.identity.passwords import Passwords

    settings = settings_or_exit()
    address = _email_or_exit(email)
    password = _read_password(password_stdin)
    user = _in_unit_of_work(
        settings,
        lambda session: service.create_user(
            session,
            Passwords(settings.auth),
            settings.auth,
            email=address,
            password=password,
            role=role,
        ),
    )
    typer.echo(f"created {user.role.value} {user.email} ({user.id})")


@users_app.command("list")
def users_list(
    limit: Annotated[int, typer.Option(min=1, max=100)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """List accounts, oldest first."""
    from mainsail.core.pagination import PageParams
    from mainsail.identity import service

    settings = settings_or_exit()
    page = _in_unit_of_work(
        settings,
        lambda session: service.list_users(session, PageParams(limit=limit, offset=offset)),
    )
    for user in page.items:
        state = "disabled" if user.disabled else "active"
        typer.echo(f"{user.id}  {user.role.value:<5}  {state:<8}  {user.email}")
    typer.echo(f"{len(page.items)} of {page.total} users")


def _administer(email: str, changes: UserAdminUpdate) -> UserOut:
    from mainsail.core.db import utcnow
    from mainsail.identity import service

    settings = settings_or_exit()
    address = _email_or_exit(email)

    async def work(session: AsyncSession) -> UserOut:
        user = await service.find_user_by_email(session, address)
        return await service.administer_user(session, user.id, changes=changes, now=utcnow())

    return _in_unit_of_work(settings, work)


@users_app.command("set-password")
def users_set_password(
    email: Annotated[str, typer.Argument(help="The account's email")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Set a new password (a forgotten one, say); every session of the account ends."""
    from mainsail.core.db import utcnow
    from mainsail.identity import service
    from mainsail.identity.passwords import Passwords

    settings = settings_or_exit()
    address = _email_or_exit(email)
    password = _read_password(password_stdin)

    async def work(session: AsyncSession) -> UserOut:
        user = await service.find_user_by_email(session, address)
        return await service.set_password(
            session,
            Passwords(settings.auth),
            settings.auth,
            user.id,
            password=password,
            now=utcnow(),
        )

    user = _in_unit_of_work(settings, work)
    typer.echo(f"password of {user.email} changed; its sessions have ended")


@users_app.command("disable")
def users_disable(email: Annotated[str, typer.Argument(help="The account's email")]) -> None:
    """Disable an account: its sessions end and its API keys stop working."""
    user = _administer(email, UserAdminUpdate(disabled=True))
    typer.echo(f"disabled {user.email}")


@users_app.command("enable")
def users_enable(email: Annotated[str, typer.Argument(help="The account's email")]) -> None:
    """Re-enable a disabled account."""
    user = _administer(email, UserAdminUpdate(disabled=False))
    typer.echo(f"enabled {user.email}")


@users_app.command("set-role")
def users_set_role(
    email: Annotated[str, typer.Argument(help="The account's email")],
    role: Annotated[Role, typer.Argument(help="user or admin")],
) -> None:
    """Make an account a user or an admin."""
    user = _administer(email, UserAdminUpdate(role=role))
    typer.echo(f"{user.email} is now {user.role.value}")


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


def main() -> None:
    app(prog_name="mainsail")


if __name__ == "__main__":  # pragma: no cover
    main()
