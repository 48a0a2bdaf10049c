"""The command center's receiving core (PROTOCOL.md, OPERATOR.md ``center``).

Subscribes to every gateway under the prefix, verifies each envelope against its registry
(which kids may sign for which gateway), lets its store (``center.store``: SQLite or
PostgreSQL) apply the de-duplicate/anti-replay rules and keep every envelope, rejection and
alarm, acknowledges accepted events with a signed ``ack`` after the commit, and asks a
gateway whose authentic envelope was refused for its seq to ``resync``. A garbage payload is
a rejection, never a crash. Presentation is in ``center.present``, the service in
``center.run``.

It also watches each registered gateway's liveness (center/liveness.py): heartbeats and
troubles are shown as they arrive, and a line says when a gateway goes ``stale`` (no heartbeat
within 2.5 x its ``heartbeat_s``), ``offline`` (its will or clean stop; a will from an older
session is ignored) or ``online`` again.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from center.check import (
    TOPIC_TYPES,
    Verdict,
    precheck,
    remote_init,
    remote_precheck,
    wire_body,
)
from center.liveness import STALE_INTERVALS, GatewayStatus, Liveness
from center.outbound import Outbound, resync_body, sign
from center.store import Admission, Arrival, Store, StoreError
from gateway.contract.envelope import EVENT_TYPES, Envelope, build, parse_ts
from gateway.contract.signing import SigningKey, VerifyKey
from gateway.contract.topics import topic
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import Uplink

log = structlog.get_logger("alarmgw.center")

ACK_IDS_MAX = 200  # ids per ack envelope (keeps an ack far below the envelope size limit)
INLINE_MAX = 2  # a burst this small, with none ahead of it, is checked without a thread hop
# Bursts at the checker at once: one being checked and one waiting, so it never idles; what
# arrives meanwhile waits here and goes as one bigger burst (fewer hand-offs, syncs, acks).
CHECKING_MAX = 2
BURST_MAX = 1024  # envelopes per burst at most
HELD_MAX = 200_000  # envelopes held while the store cannot commit (past that: re-sent later)
STORE_RETRY_MAX_S = 5.0  # longest wait between attempts to reach the store again
RESYNC_EVERY_S = 10.0  # PROTOCOL.md "resync": at most one per signer per 10 s
SEQ_REASONS = frozenset({"replayed-seq", "seq-below-window"})  # authentic, refused for its seq


@dataclass(slots=True)
class Registry:
    """Which kids may sign for which gateway (site, gw)."""

    keys: dict[tuple[str, str], dict[str, VerifyKey]] = field(default_factory=dict)
    heartbeat_s: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, site: str, gw: str, key: VerifyKey, heartbeat_s: float = 30.0) -> None:
        self.keys.setdefault((site, gw), {})[key.kid] = key
        self.heartbeat_s[(site, gw)] = heartbeat_s


Received = tuple[str, bytes, "Uplink | None", float]  # topic, payload, session, arrival time


class Center:
    """Verifies, de-duplicates, acknowledges and reports. Pure decisions in ``receive``;
    the MQTT session is attached with ``attach``."""

    def __init__(
        self,
        *,
        prefix: str,
        key: SigningKey,
        seq: SeqCounter,
        state: Store,
        registry: Registry,
        workers: str = "thread",
        share_group: str | None = None,
    ) -> None:
        """``workers``: where bursts are checked: ``thread`` (a thread of this process) or
        ``process`` (a process of its own, beside the GIL; ``alarmgw center`` uses that)."""
        self.prefix = prefix
        self.share_group = share_group
        self._key = key
        self._seq = seq
        self.state = state
        self.registry = registry
        self._uplink: Uplink | None = None
        self.listeners: list[Callable[[Verdict], None]] = []
        # Received, not yet decided: (topic, payload, session, arrival time).
        self._incoming: list[Received] = []
        self._dispatching = False  # a _dispatch is scheduled on the loop
        # Bursts whose signatures a worker thread is checking, decided in arrival order.
        self._checking: deque[tuple[list[Received], asyncio.Future[list[Verdict | Envelope]]]]
        self._checking = deque()
        self._pool: Executor | None = None
        self._closed = False
        self.workers = workers
        self.liveness = Liveness(registry.heartbeat_s)
        self.status_listeners: list[Callable[[GatewayStatus], None]] = []
        self.burst_listeners: list[Callable[[], None]] = []  # after each burst's listeners
        # Bursts decided while the store could not commit, waiting for it, in order.
        self._held: deque[tuple[list[Received], list[Verdict | Envelope]]] = deque()
        self._replaying = False
        self._retry_task: asyncio.Task[None] | None = None
        self._resync_at: dict[str, float] = {}  # kid -> when this instance sent a resync
        self.store_ok = True
        self.counts: Counter[str] = Counter()  # accepted / duplicate / rejected:<reason>
        self.commit_s = 0.0  # the last burst's database time
        self.started = time.time()

    def attach(self, uplink: Uplink) -> None:
        self._uplink = uplink

    @property
    def kid(self) -> str:
        return self._key.kid

    def subscriptions(self) -> list[str]:
        share = f"$share/{self.share_group}/" if self.share_group else ""
        return [f"{share}{self.prefix}/+/+/{kind}" for kind in TOPIC_TYPES]

    def on_message(self, name: str, payload: bytes, via: Uplink | None = None) -> None:
        """One payload from the broker session ``via`` (default: the primary).

        Everything received in one loop turn is a burst, and so is everything received
        while the checker already holds ``CHECKING_MAX`` bursts (up to ``BURST_MAX``). A
        burst's signatures are checked by the worker while the loop goes on reading, unless
        it is a lone envelope with nothing ahead of it: that one is checked at once, without
        a hop. Bursts are decided in the order they arrived, each in one transaction (group
        commit); after its single sync the center acknowledges them, one ``ack`` per gateway
        naming all their ids, on the session each came in on.

        A full burst goes to the checker at once, even in the middle of a loop turn: one
        turn may read thousands of envelopes (a broker handing over a backlog), and the
        checker should not wait for its end, nor for the decision of what it checked
        before (that waits for the turn's end)."""
        self._incoming.append((name, payload, via or self._uplink, time.time()))
        if len(self._incoming) >= BURST_MAX:
            unchecked = sum(not fut.done() for _, fut in self._checking)
            if unchecked < CHECKING_MAX:
                self._submit_full()
        self._want_dispatch()

    def _submit_full(self) -> None:
        if self._closed:
            return
        burst = self._incoming[:BURST_MAX]
        try:
            fut = self._submit(burst)
        except (BrokenExecutor, RuntimeError):
            return  # _dispatch (next turn) checks it here and starts a new checker
        del self._incoming[:BURST_MAX]
        self._checking.append((burst, fut))
        fut.add_done_callback(self._checked)

    def _want_dispatch(self) -> None:
        if self._incoming and not self._dispatching and len(self._checking) < CHECKING_MAX:
            self._dispatching = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatching = False
        if self._closed:
            self._incoming.clear()
            return  # stopping: not acknowledged, the gateways send it again
        if len(self._checking) >= CHECKING_MAX:
            return  # _checked dispatches when the checker has room
        burst = self._incoming[:BURST_MAX]
        del self._incoming[:BURST_MAX]
        self._dispatch_burst(burst)
        self._want_dispatch()

    def _dispatch_burst(self, burst: list[Received]) -> None:
        if len(burst) <= INLINE_MAX and not self._checking:
            self._decide(burst, self._precheck_all(burst))
            return
        try:
            fut = self._submit(burst)
        except (BrokenExecutor, RuntimeError) as err:  # the worker died, or was shut down
            log.error("burst checker unavailable; checking here", error=repr(err))
            self._drop_pool()
            if self._checking:  # keep the order: after what is still being checked
                done: asyncio.Future[list[Verdict | Envelope]]
                done = asyncio.get_running_loop().create_future()
                done.set_result(self._precheck_all(burst))
                self._checking.append((burst, done))
                return
            self._decide(burst, self._precheck_all(burst))
            return
        self._checking.append((burst, fut))
        fut.add_done_callback(self._checked)

    def start_checker(self) -> None:
        """Start the checker now, not with the first burst: a checker process takes a few
        hundred milliseconds to start (a fresh interpreter), which the first alarms after
        a center start should not wait for."""
        pool = self._checker()
        if isinstance(pool, ProcessPoolExecutor):
            pool.submit(remote_precheck, [])  # spawns it; should it fail, bursts notice

    def _checker(self) -> Executor:
        if self._pool is None:
            if self.workers == "process":
                raw = {
                    sg: [k.public_raw for k in ks.values()] for sg, ks in self.registry.keys.items()
                }
                self._pool = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=remote_init,
                    initargs=(self.prefix, raw, os.getpid()),
                )
            else:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="center-verify")
        return self._pool

    def _submit(self, burst: list[Received]) -> asyncio.Future[list[Verdict | Envelope]]:
        loop = asyncio.get_running_loop()
        pool = self._checker()
        if isinstance(pool, ProcessPoolExecutor):
            pairs = [(name, payload) for name, payload, _, _ in burst]
            return loop.run_in_executor(pool, remote_precheck, pairs)
        return loop.run_in_executor(pool, self._precheck_all, burst)

    def _precheck_all(self, burst: list[Received]) -> list[Verdict | Envelope]:
        return [self._precheck(name, payload) for name, payload, _, _ in burst]

    def _checked(self, _fut: asyncio.Future[list[Verdict | Envelope]]) -> None:
        if self._closed:
            self._checking.clear()
            return
        while self._checking and self._checking[0][1].done():
            burst, fut = self._checking.popleft()
            if fut.cancelled():
                continue  # the center is stopping: not acked, the gateways re-send
            if (err := fut.exception()) is not None:
                # The checker died (killed, out of memory): check the burst here, so no
                # alarm waits for a re-send; a new checker starts with the next burst.
                log.error("burst checker failed; checking here", count=len(burst), error=repr(err))
                self._drop_pool()
                self._decide(burst, self._precheck_all(burst))
                continue
            self._decide(burst, fut.result())
        self._want_dispatch()

    def close(self) -> None:
        """Stop the checker at once (bursts still being checked are dropped, not acked:
        the gateways re-send them to whoever runs next)."""
        self._closed = True
        if self._retry_task is not None:
            self._retry_task.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:  # a process pool only; no need to wait for its turn
                proc.terminate()

    def _drop_pool(self) -> None:
        """Let a broken checker go (what it still holds fails and is checked here); the
        next burst starts a new one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _decide(self, burst: list[Received], checked: list[Verdict | Envelope]) -> None:
        """Decide a checked burst in one transaction; acknowledge only after its commit.
        While the store cannot commit, bursts wait here in order (none is acknowledged, and
        the gateways keep re-sending) and are decided once it can again."""
        if self._held and not self._replaying:
            if sum(len(b) for b, _ in self._held) < HELD_MAX:
                self._held.append((burst, checked))
            return  # beyond that, not kept: the gateways re-send what was not acked
        if not self._decide_now(burst, checked):
            self._held.append((burst, checked))
            if self._retry_task is None:
                self._retry_task = asyncio.get_running_loop().create_task(
                    self._retry_held(), name="center-store-retry"
                )

    def _decide_now(self, burst: list[Received], checked: list[Verdict | Envelope]) -> bool:
        batch: list[tuple[Verdict, Uplink | None]] = []
        began = time.perf_counter()
        try:
            self.state.begin_batch()
            verdicts = self._judge_all(burst, checked)
            for (_, payload, via, _), verdict in zip(burst, verdicts, strict=True):
                if verdict.result == "rejected":
                    self._keep_rejection(verdict, payload)
                batch.append((verdict, via))
            beating = {
                (v.env.site, v.env.gw)
                for v in verdicts
                if v.result == "accepted" and v.env is not None and v.env.type == "heartbeat"
            }
            sessions = self.state.sessions(beating) if beating else {}  # for observe
            self.state.commit_batch()
        except StoreError as err:
            # Nothing of the burst is kept or acknowledged yet.
            self.state.abort_batch()
            self.store_ok = False
            log.error("cannot record a burst; not acknowledged", count=len(burst), error=str(err))
            return False
        self.store_ok = True
        self.commit_s = time.perf_counter() - began
        for verdict, _via in batch:
            key = verdict.result if verdict.result != "rejected" else f"rejected:{verdict.reason}"
            self.counts[key] += 1
        acks: dict[tuple[str, str, int], tuple[Uplink | None, list[str]]] = {}
        for verdict, via in batch:
            env = verdict.env
            if verdict.result != "rejected" and env is not None and env.type in EVENT_TYPES:
                acks.setdefault((env.site, env.gw, id(via)), (via, []))[1].append(env.id)
            elif verdict.reason in SEQ_REASONS and env is not None:
                self._resync(env, via)
        for (site, gw, _), (via, ids) in acks.items():
            for start in range(0, len(ids), ACK_IDS_MAX):
                self._ack(site, gw, ids[start : start + ACK_IDS_MAX], via)
        for verdict, _via in batch:
            if verdict.result == "rejected":
                log.warning(
                    "rejected envelope",
                    topic=verdict.topic,
                    reason=verdict.reason,
                    detail=verdict.detail,
                )
            for listener in self.listeners:
                listener(verdict)
            change = self.observe(verdict, sessions)
            if change is not None:
                self._status_changed(change)
        for after in self.burst_listeners:
            after()
        return True

    async def _retry_held(self) -> None:
        """Wait for the store (tenacity backoff), then decide the held bursts in order."""
        try:
            while self._held and not self._closed:
                async for attempt in AsyncRetrying(
                    wait=wait_exponential(multiplier=0.1, max=STORE_RETRY_MAX_S),
                    retry=retry_if_exception_type(StoreError),
                ):
                    with attempt:
                        self.state.ping()
                self._replaying = True
                try:
                    while self._held and not self._closed:
                        burst, checked = self._held[0]
                        if not self._decide_now(burst, checked):
                            break
                        self._held.popleft()
                finally:
                    self._replaying = False
            if not self._held:
                log.info("store available again; held bursts recorded")
        finally:
            self._retry_task = None

    def _path(self, via: Uplink | None) -> str:
        return "primary" if via is None or via is self._uplink else "secondary"

    def _keep_rejection(self, v: Verdict, payload: bytes) -> None:
        self.state.reject(
            topic=v.topic,
            reason=v.reason or "rejected",
            detail=v.detail,
            env=v.env,
            payload=payload,
            received=v.received or time.time(),
        )

    def observe(
        self, v: Verdict, sessions: Mapping[tuple[str, str], int] | None = None
    ) -> GatewayStatus | None:
        """Feed an accepted heartbeat or state to the liveness view; the change, if any.
        ``sessions``: each gateway's latest session, when the caller read them already."""
        env = v.env
        if v.result != "accepted" or env is None:
            return None  # a duplicate is an old envelope again: no sign of life now
        if env.type == "heartbeat":
            session = int(env.body["session"])
            known = (sessions or {}).get((env.site, env.gw))
            latest = self.state.session(env.site, env.gw) if known is None else known
            current = session >= latest
            return self.liveness.heartbeat(env.site, env.gw, session, current=current)
        if env.type == "state" and not v.stale:
            status, session = str(env.body["status"]), int(env.body["session"])
            return self.liveness.state(env.site, env.gw, status, session)
        return None

    def check_stale(self) -> list[GatewayStatus]:
        """Mark gateways without a heartbeat for 2.5 x their interval stale; the changes.
        With a share group another instance may have had the heartbeats: the store's
        latest one counts too."""
        changes = []
        for change in self.liveness.check():
            if self.share_group and self._beat_elsewhere(change):
                continue
            changes.append(change)
            self._status_changed(change)
        return changes

    def _beat_elsewhere(self, change: GatewayStatus) -> bool:
        try:
            last = self.state.last_heartbeat(change.site, change.gw)
        except StoreError:
            return False
        if last is None or time.time() - last > STALE_INTERVALS * change.heartbeat_s:
            return False
        session = max(self.state.session(change.site, change.gw), 0)
        self.liveness.heartbeat(change.site, change.gw, session, current=True)
        return True

    def _status_changed(self, change: GatewayStatus) -> None:
        if self.share_group:
            # Several instances see the same gateways: the one whose update changes the
            # stored status reports it.
            try:
                if not self.state.report_liveness(
                    change.site, change.gw, change.status, now=time.time()
                ):
                    return
            except StoreError as err:
                log.error("cannot record a liveness change", error=str(err))
        log_fn = log.info if change.status == "online" else log.warning
        log_fn("gateway " + change.status, site=change.site, gw=change.gw, reason=change.reason)
        for listener in self.status_listeners:
            listener(change)

    async def watch(self) -> None:
        """``check_stale`` a few times per heartbeat interval, for ever."""
        while True:
            await asyncio.sleep(self.liveness.period())
            self.check_stale()

    def receive(self, name: str, payload: bytes) -> Verdict:
        """Decide about one payload received on topic ``name`` and keep the decision;
        never raises but StoreError."""
        received = time.time()
        with self.state.transaction():
            verdict = self._judge(name, self._precheck(name, payload), received)
            if verdict.result == "rejected":
                self._keep_rejection(verdict, payload)
        return verdict

    def _precheck(self, name: str, payload: bytes) -> Verdict | Envelope:
        return precheck(self.prefix, self.registry.keys, name, payload)

    def _judge(
        self, name: str, pre: Verdict | Envelope, received: float, path: str = "primary"
    ) -> Verdict:
        """The stateful half, on the loop thread: anti-replay, de-duplication, acceptance
        (decided by the store, inside the burst's transaction)."""
        if isinstance(pre, Verdict):
            return replace(pre, received=received, path=path)
        verified_at = time.perf_counter()
        got = self.state.admit(pre, received=received, path=path)
        return _verdict(name, pre, got, received=received, path=path, verified_at=verified_at)

    def _judge_all(self, burst: list[Received], checked: list[Verdict | Envelope]) -> list[Verdict]:
        """``_judge`` for each of a checked burst, with one store call for its envelopes."""
        arrivals = [
            Arrival(pre, received, self._path(via), wire_body(pre, payload))
            for (_, payload, via, received), pre in zip(burst, checked, strict=True)
            if not isinstance(pre, Verdict)
        ]
        verified_at = time.perf_counter()
        admitted = iter(self.state.admit_all(arrivals) if arrivals else ())
        out = []
        for (name, _, via, received), pre in zip(burst, checked, strict=True):
            if isinstance(pre, Verdict):
                out.append(replace(pre, received=received, path=self._path(via)))
            else:
                got = next(admitted)
                path = self._path(via)
                out.append(
                    _verdict(name, pre, got, received=received, path=path, verified_at=verified_at)
                )
        return out

    def _resync(self, env: Envelope, via: Uplink | None) -> None:
        """PROTOCOL.md "resync": at most one per signer per 10 s, whichever instance."""
        now = time.time()
        if now - self._resync_at.get(env.kid, 0.0) < RESYNC_EVERY_S:
            return
        via = via or self._uplink
        if via is None or not via.connected:
            return  # the gateway re-sends; the next refusal asks again
        try:
            if not self.state.claim_resync(env.kid, now=now, every_s=RESYNC_EVERY_S):
                return
            next_seq = max(self.state.high(env.kid), env.seq) + 1
        except StoreError as err:
            log.error("cannot record a resync", kid=env.kid, error=str(err))
            return
        self._resync_at[env.kid] = now
        out = self.sign(env.site, env.gw, "resync", resync_body(env.kid, next_seq))
        log.warning("resync sent", site=env.site, gw=env.gw, kid=env.kid, next_seq=next_seq)
        fut = via.publish(topic(self.prefix, env.site, env.gw, "ack"), out.payload)
        fut.add_done_callback(_ignore_failure)

    def sign(self, site: str, gw: str, kind: str, body: Mapping[str, Any]) -> Outbound:
        """A center -> gateway envelope, signed with the center's key and next seq."""
        return sign(type=kind, site=site, gw=gw, seq=self._seq.next(), body=body, key=self._key)

    @property
    def uplink(self) -> Uplink | None:
        return self._uplink

    def _ack(self, site: str, gw: str, ids: list[str], via: Uplink | None) -> None:
        if via is None or not via.connected:
            return  # the gateway re-sends; we will ack the duplicate then
        ack = build(
            type="ack",
            site=site,
            gw=gw,
            seq=self._seq.next(),
            body={"ids": ids},
            key=self._key,
        )
        fut = via.publish(topic(self.prefix, site, gw, "ack"), ack.to_bytes())
        fut.add_done_callback(_ignore_failure)


def _verdict(
    name: str, env: Envelope, got: Admission, *, received: float, path: str, verified_at: float
) -> Verdict:
    latency = round((received - parse_ts(env.ts).timestamp()) * 1000, 1)
    if got.result == "rejected":
        return Verdict(
            "rejected",
            name,
            got.reason,
            got.detail,
            env,
            latency_ms=latency,
            unproven=got.unproven,
            path=path,
            received=received,
        )
    return Verdict(
        got.result,
        name,
        env=env,
        latency_ms=latency,
        stale=got.stale,
        verified_at=verified_at if got.result == "accepted" else 0.0,
        path=path,
        received=received,
    )


def _ignore_failure(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("ack not delivered to the broker", error=str(fut.exception()))


def __getattr__(name: str) -> Any:
    # The presentation and the service moved to modules of their own, which import this
    # one; these names stay importable from here.
    if name in ("console", "human_line", "heartbeat_summary"):
        from center import present  # noqa: PLC0415

        return getattr(present, name)
    if name in ("run_center", "_open_center"):
        from center import run  # noqa: PLC0415

        return getattr(run, name)
    raise AttributeError(name)
