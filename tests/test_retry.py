"""gateway/retry.py: the retry policies (waits, what is retried, when it stops) and the one
log line per retry."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import capture_logs
from tenacity import RetryCallState

from gateway import retry
from gateway.retry import Policy, RetryLog


def waits(policy: Policy, attempts: int) -> list[float]:
    wait = policy.wait()
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    out = []
    for n in range(1, attempts + 1):
        state.attempt_number = n
        out.append(wait(state))
    return out


@pytest.mark.parametrize(
    "policy",
    [retry.CONNECT, retry.RECONNECT, retry.SERIAL_OPEN, retry.BIND, retry.HTTP_POLL, retry.RESTART],
)
def test_waits_are_jittered_exponential_and_capped(policy: Policy) -> None:
    for _ in range(50):
        for n, got in enumerate(waits(policy, 12), start=1):
            full = min(policy.first_s * 2 ** (n - 1), policy.cap_s)
            assert full / 2 - 1e-9 <= got <= full + 1e-9, (n, got)


def test_waits_vary_between_runs() -> None:
    assert len({round(waits(retry.RECONNECT, 3)[2], 6) for _ in range(20)}) > 1


def test_a_huge_attempt_number_waits_the_cap() -> None:
    assert retry.CONNECT.cap_s / 2 <= waits(retry.CONNECT, 3000)[-1] <= retry.CONNECT.cap_s


def test_the_mqtt_link_comes_back_within_seconds() -> None:
    # An alarm gateway must be back on the broker soon after it returns.
    assert retry.CONNECT.cap_s <= 5.0
    assert retry.RECONNECT.cap_s <= 5.0
    assert retry.CONNECT.attempts is None and retry.RECONNECT.attempts is None


def test_limited_keeps_first_within_cap() -> None:
    p = retry.BIND.limited(cap_s=0.3)
    assert (p.first_s, p.cap_s) == (0.3, 0.3)
    assert retry.BIND.limited(first_s=None, cap_s=None) == retry.BIND
    assert retry.RESTART.limited(first_s=0.01).first_s == 0.01


FAST = Policy("test", first_s=0.004, cap_s=0.016)


async def test_retries_named_errors_for_ever_and_logs_each_retry() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise ConnectionRefusedError(111, "Connection refused")
        return "up"

    with capture_logs() as logs:
        result = None
        async for attempt in FAST.retrying(OSError, event="thing unreachable", host="h"):
            with attempt:
                result = await flaky()
    assert result == "up" and calls == 6
    lines = [e for e in logs if e["event"] == "thing unreachable"]
    assert [e["attempt"] for e in lines] == [1, 2, 3, 4, 5]
    assert all(e["host"] == "h" and e["kind"] == "test" for e in lines)
    assert all(0 < e["retry_in_s"] <= FAST.cap_s for e in lines[1:])
    assert lines[0]["error"] == "ConnectionRefusedError: [Errno 111] Connection refused"
    # The first line of an outage is a warning; the same error again within a minute is not.
    assert [e["log_level"] for e in lines] == ["warning"] + ["debug"] * 4


async def test_other_errors_and_cancellation_are_not_retried() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        async for attempt in FAST.retrying(OSError):
            with attempt:
                await broken()
    assert calls == 1

    async def forever() -> None:
        async for attempt in FAST.retrying(OSError):
            with attempt:
                raise OSError("down")

    task = asyncio.create_task(forever())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_policy_with_attempts_raises_the_last_error() -> None:
    p = retry.HTTP_POLL.limited(first_s=0.001, cap_s=0.002)
    calls = 0
    with capture_logs() as logs, pytest.raises(OSError, match="refused 3"):
        async for attempt in p.retrying(OSError, event="poll retry"):
            with attempt:
                calls += 1
                raise OSError(f"refused {calls}")
    assert calls == p.attempts == 3
    assert [e["attempt"] for e in logs if e["event"] == "poll retry"] == [1, 2]


async def test_event_chosen_by_the_error_and_a_shared_log_across_calls() -> None:
    now = [0.0]
    shared = RetryLog(
        structlog.get_logger("t"),
        lambda err: "refused" if isinstance(err, ConnectionRefusedError) else "other",
        clock=lambda: now[0],
        url="u",
    )

    p = Policy("t", first_s=0.001, cap_s=0.002, attempts=2)
    with capture_logs() as logs:
        for err in (ConnectionRefusedError("x"), ConnectionRefusedError("x"), OSError("y")):
            async for attempt in p.retrying(OSError, retry_log=shared):
                with attempt:
                    if attempt.retry_state.attempt_number == 1:
                        raise err
        now[0] = 61.0
        async for attempt in p.retrying(OSError, retry_log=shared):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise OSError("y")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("refused", "warning"),
        ("refused", "debug"),  # the same error in the next call: quiet
        ("other", "warning"),  # a different error
        ("other", "warning"),  # the same again, a minute later
    ]
    assert all(e["url"] == "u" for e in logs)
