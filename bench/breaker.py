"""How fast an open circuit breaker sheds a call, next to a direct call of the same stack.

Runs the gateway's real wrapper stack (Retrying > Breaker > Bounded > Deadline) around the
deterministic scripted provider, opens the breaker with scripted failures, then times many
calls that the open breaker refuses, and the same number of successful calls through a closed
breaker. Prints microseconds per call. `.venv/bin/python bench/breaker.py [--calls N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import CircuitOpen, UpstreamUnavailable
from mainsail.llm.providers.scripted import ScriptedAdapter
from mainsail.llm.resilience import Bounded, Breaker, Deadline, ProviderModel, Retrying
from mainsail.llm.types import ChatRequest, Message

ENTRY = ModelEntry(name="m", provider="scripted", model="m")
REQUEST = ChatRequest(model="m", messages=(Message(role="user", content="hi"),))


def stack(adapter: ScriptedAdapter) -> tuple[Retrying, Breaker]:
    breaker = Breaker(
        Bounded(
            Deadline(ProviderModel(adapter, ENTRY), total_s=5, stream_total_s=60),
            asyncio.Semaphore(64),
        ),
        failure_threshold=3,
        reset_after_s=3600,
    )
    return Retrying(
        breaker, attempts=1, base_delay_s=0, max_delay_s=0, max_retry_after_s=0
    ), breaker


async def timed(calls: int, call: object) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        with contextlib.suppress(CircuitOpen, UpstreamUnavailable):
            await call()  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


async def main(calls: int) -> None:
    healthy, _ = stack(ScriptedAdapter(rules=[{"reply": "ok"}]))
    failing_adapter = ScriptedAdapter(rules=[{"error": "unavailable"}])
    failing, breaker = stack(failing_adapter)
    for _ in range(3):  # open it
        with contextlib.suppress(UpstreamUnavailable):
            await failing.complete(REQUEST)
    assert breaker.state == "open"
    before = len(failing_adapter.calls)
    shed = await timed(calls, lambda: failing.complete(REQUEST))
    assert len(failing_adapter.calls) == before, "an open breaker must not call the provider"
    passed = await timed(calls, lambda: healthy.complete(REQUEST))
    print(f"calls per row: {calls}")
    print("| path | p50 µs | p99 µs | mean µs |")
    print("|---|---:|---:|---:|")
    for name, samples in (
        ("open breaker, call shed", shed),
        ("closed breaker, scripted answer", passed),
    ):
        ordered = sorted(samples)
        p50, p99 = statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {statistics.fmean(ordered):.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().calls))
