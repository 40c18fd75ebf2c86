"""The FastAPI app factory and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.telemetry import TelemetryConfig
from opentelemetry import _logs as otel_logs
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

from mainsail import __version__
from mainsail.api import ROUTERS
from mainsail.chat.runtime import start_chat
from mainsail.core import embedded_pg
from mainsail.core.db import Database
from mainsail.core.errors import install_error_handlers
from mainsail.core.hotpath import HotRoutes
from mainsail.core.logging import configure_logging, get_logger
from mainsail.core.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from mainsail.core.notify import PgListener
from mainsail.core.ratelimit import RateLimiter
from mainsail.core.readiness import ReadinessRegistry, database_checks
from mainsail.documents.runtime import start_documents
from mainsail.idempotency.middleware import IdempotencyMiddleware
from mainsail.idempotency.service import IdempotencyStore
from mainsail.identity import cache as identity_cache
from mainsail.identity.passwords import Passwords
from mainsail.identity.service import IdentityKit
from mainsail.identity.throttle import LoginThrottle
from mainsail.identity.tokens import TokenCodec
from mainsail.jobs import repository as jobs_repository
from mainsail.jobs.broker import Dispatcher, make_celery
from mainsail.jobs.service import JobRunner
from mainsail.llm.catalogue import check_catalogue
from mainsail.llm.errors import LLMError
from mainsail.llm.factory import build_gateway, response_cache
from mainsail.llm.tokens import warm_up as warm_up_tokenizer
from mainsail.openai_compat.errors import llm_problem, to_openai_error
from mainsail.openai_compat.router import hot_routes as openai_hot_routes
from mainsail.quotas.service import DbQuota
from mainsail.ratelimits.middleware import RateLimitMiddleware
from mainsail.ratelimits.policy import RateLimits
from mainsail.search.runtime import (
    register_jobs,
    search_cache,
    start_index_versions,
    start_search,
)
from mainsail.settings import Settings, SettingsError, load_settings
from mainsail.usage.writer import UsageWriter

log = get_logger(__name__)


def create_app(settings: Settings) -> FastAPI:
    rate_limits = RateLimits(settings.rate_limit)  # counters live as long as the app

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(rate_limits.aclose)
            url = settings.async_database_url()
            if url is None:
                embedded = await asyncio.to_thread(
                    embedded_pg.attach, settings.embedded_dir(), settings.database
                )
                stack.callback(embedded.release)
                url = embedded.url
            db = Database(url, settings.database)
            stack.push_async_callback(db.dispose)
            readiness = ReadinessRegistry(timeout_s=settings.database.ready_timeout_s)
            for name, check in database_checks(db).items():
                readiness.add(name, check)
            app.state.settings = settings
            app.state.db = db
            app.state.readiness = readiness
            kit = await asyncio.to_thread(build_identity_kit, settings)
            app.state.identity = kit
            listener = PgListener(db)

            def identity_changed(payload: str) -> None:
                kit.principals.invalidate_user(payload)
                # A role or budget change: leases reserved under the old limit go back.
                quota: DbQuota | None = getattr(app.state, "quota", None)
                if quota is not None:
                    quota.user_changed(payload)

            listener.subscribe(
                identity_cache.CHANNEL,
                identity_changed,
                on_gap=lambda: kit.principals.set_online(False),
                on_connected=lambda: kit.principals.set_online(True),
            )
            runner = JobRunner(db, settings.jobs)
            dispatcher = (
                Dispatcher(db, settings.jobs, make_celery(settings.jobs))
                if settings.jobs.executor == "celery"
                else None
            )
            wake = runner.wake if dispatcher is None else dispatcher.wake
            # A notification may be lost while disconnected: look again on every (re)connect.
            listener.subscribe(jobs_repository.CHANNEL, wake, on_gap=wake, on_connected=wake)
            await listener.start()
            stack.push_async_callback(listener.stop)
            app.state.listener = listener
            usage = UsageWriter(
                db,
                spill_dir=settings.data_dir / "spill",
                flush_interval_s=settings.usage.flush_interval_s,
                batch_size=settings.usage.batch_size,
                retention_days=settings.usage.raw_retention_days,
            )
            await usage.start()
            stack.push_async_callback(usage.stop)  # after the quota drain: runs last
            quota = DbQuota(db, settings.quota)
            await quota.start()
            stack.push_async_callback(quota.drain)
            cache = response_cache(settings.response_cache)
            if cache is not None:
                stack.push_async_callback(cache.aclose)
            gateway, adapters = build_gateway(settings.llm, usage=usage, quota=quota, cache=cache)
            for adapter in adapters:
                stack.push_async_callback(adapter.aclose)
            await asyncio.to_thread(warm_up_tokenizer)
            app.state.usage = usage
            app.state.quota = quota
            app.state.gateway = gateway
            app.state.idempotency = IdempotencyStore(db, settings.idempotency)
            await app.state.idempotency.start()  # purges expired keys periodically
            stack.push_async_callback(app.state.idempotency.stop)
            app.state.documents = await start_documents(settings, db, gateway)
            search_results = search_cache(settings.search)
            if search_results is not None:
                stack.push_async_callback(search_results.aclose)
            app.state.search = start_search(
                settings.search, db, app.state.documents.embedders, search_results
            )
            stack.push_async_callback(app.state.search.aclose)  # its background counts
            app.state.index_versions = start_index_versions(
                settings, db, app.state.documents, app.state.search
            )
            register_jobs(runner, app.state.documents, app.state.index_versions)
            app.state.chat = start_chat(settings.chat, db, gateway, app.state.search)
            app.state.jobs = runner
            if dispatcher is not None:  # Celery workers run the jobs; send them there
                app.state.dispatcher = dispatcher
                await dispatcher.start()
                stack.push_async_callback(dispatcher.stop)
            elif settings.jobs.executor == "inprocess":
                await runner.start()
                stack.push_async_callback(runner.stop)  # first out: running jobs handed back
            log.info("started", version=__version__, environment=settings.environment)
            # What start-up built lives as long as the process: keep the collector from
            # walking it again on every full collection (those were the p99 stalls).
            gc.collect()
            gc.freeze()
            yield
            log.info("stopping")

    telemetry = fastapi_telemetry()
    app = FastAPI(
        telemetry=telemetry,
        title="Mainsail",
        version=__version__,
        summary="Self-hosted AI backend",
        lifespan=lifespan,
        # Served by apidocs.router, behind the anonymous-read setting.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    # /v1 answers in OpenAI's shape, whatever refuses the request.
    v1_errors = (("/v1/", to_openai_error),)
    install_error_handlers(app, shapes=v1_errors)
    app.add_exception_handler(LLMError, llm_problem)
    # Added innermost first: the request-id middleware wraps everything, so even a 413
    # refused before routing carries the id.
    # Innermost: the gateway's hot route, straight to its handler (see core.hotpath). Not
    # while FastAPI's telemetry is on: its spans and metrics learn the route from the router.
    if telemetry and not any(telemetry.values()):
        app.add_middleware(HotRoutes, owner=app, lanes=openai_hot_routes())
    # Inside the body limit: it reads bodies already cut to size.
    app.add_middleware(
        IdempotencyMiddleware,
        settings=settings.idempotency,
        error_shapes=v1_errors,
    )
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.http.max_body_bytes,
        # Uploads: the file plus room for the form around it.
        upload_limits={"/documents": settings.documents.max_upload_bytes + 65_536},
        error_shapes=v1_errors,
    )
    if settings.rate_limit.enabled:  # outside the body limit: a refused request reads nothing
        app.add_middleware(RateLimitMiddleware, limits=rate_limits)
    if settings.http.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            # What a browser client may read: ids, limits, replay and cache markers.
            expose_headers=[
                "X-Request-ID",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "Retry-After",
                "Idempotent-Replayed",
                "Mainsail-Cache",
            ],
        )
    app.add_middleware(RequestContextMiddleware, max_length=settings.http.request_id_max_length)
    for router in ROUTERS:
        app.include_router(router)
    return app


def fastapi_telemetry() -> TelemetryConfig:
    """FastAPI's OpenTelemetry instrumentation, on for each signal an OpenTelemetry SDK is set
    up for when the app is made (by ``opentelemetry-instrument``, the ``OTEL_PYTHON_*_PROVIDER``
    variables, or code that runs first), and off for the others. Left on, FastAPI asks the
    global providers on every request whether one has been set up since (three environment
    lookups and provider calls, about 3% of a gateway call's CPU), for signals nothing
    collects. ``FASTAPI_OTEL_AUTO_CONFIGURE=true`` (FastAPI sets the SDK up itself as the app
    starts) keeps FastAPI's own per-request checks."""
    if os.getenv("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return {}
    return {
        "tracing": _configured(otel_trace.get_tracer_provider()),
        "metrics": _configured(otel_metrics.get_meter_provider()),
        "logs": _configured(otel_logs.get_logger_provider()),
    }


def _configured(provider: object) -> bool:
    """Not the API's stand-in (``ProxyTracerProvider`` and its kin) that waits for an SDK."""
    return not type(provider).__name__.lstrip("_").startswith("Proxy")


def build_identity_kit(settings: Settings) -> IdentityKit:
    return IdentityKit(
        settings=settings.auth,
        passwords=Passwords(settings.auth),
        codec=TokenCodec(settings),
        throttle=LoginThrottle(
            RateLimiter(settings.rate_limit.storage_url),
            settings.auth,
            prefix=settings.rate_limit.key_prefix,
        ),
        principals=identity_cache.PrincipalCache(ttl_s=settings.auth.principal_cache_ttl_s),
    )


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings from the environment, one-line error if invalid."""
    try:
        settings = load_settings()
        check_catalogue(settings.llm)
    except SettingsError as exc:
        print(f"mainsail: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log)
    return create_app(settings)
