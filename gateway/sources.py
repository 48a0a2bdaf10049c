"""The running gateway's snapshot sources: ``CoreSnapshots`` (process, delivery, queue,
inputs, supervisor, liveness) and ``GatewaySnapshots``, the ``SnapshotSource`` the HTTP
endpoint reads, which adds the monitors.

Both hold the parts they read, never the ``Gateway`` nor anything that reads them back, so
the object graph stays a tree: the daemon owns the parts, the sources read them, the HTTP
endpoint and the monitors hold sources.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gateway import __version__
from gateway.delivery.snapshot import (
    LinkLike,
    OutboxLike,
    RelayLike,
    delivery_snapshot,
    queue_snapshot,
)
from gateway.inputs.snapshot import BoxLike, ButtonLike, input_snapshots
from gateway.snapshots import (
    DeliverySnapshot,
    GatewaySnapshot,
    InputSnapshot,
    Liveness,
    LoopLiveness,
    LoopSnapshot,
    MonitorsSnapshot,
    ProcessSnapshot,
    QueueSnapshot,
    SupervisorSnapshot,
)
from gateway.technician.status import versions


class SupervisorLike(Protocol):
    """What a snapshot reads of ``gateway.supervise.Supervisor``."""

    @property
    def restarts(self) -> Mapping[str, int]: ...
    @property
    def last_failure(self) -> Mapping[str, str]: ...
    @property
    def running(self) -> Mapping[str, asyncio.Task[None]]: ...


class Identity(Protocol):
    @property
    def site(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def config(self) -> str: ...
    @property
    def state_dir(self) -> str: ...


class RelayWithOutbox(RelayLike, Protocol):
    @property
    def outbox(self) -> OutboxLike: ...


class CoreSnapshots:
    """Snapshots of the alarm path's parts. ``snapshot`` methods run on the event loop;
    ``liveness`` on any thread."""

    def __init__(
        self,
        *,
        site: str,
        gw: str,
        kid: str,
        config: str,
        state_dir: str,
        outbox_path: str,
        min_free_bytes: int,
        relay: RelayWithOutbox,
        primary: LinkLike,
        secondary: LinkLike | None,
        buttons: Sequence[ButtonLike],
        boxes: Sequence[BoxLike],
        supervisor: SupervisorLike,
        ticks: Mapping[str, Callable[[], float]],
    ) -> None:
        """``ticks``: the loops ``/healthz`` watches, each with its last tick (monotonic)."""
        self._ident = (site, gw, kid, config, state_dir)
        self._outbox_path = outbox_path
        self._min_free_bytes = min_free_bytes
        self._relay = relay
        self._primary = primary
        self._secondary = secondary
        self._buttons = buttons
        self._boxes = boxes
        self._supervisor = supervisor
        self._ticks = dict(ticks)
        self._versions = versions()
        self._started = time.monotonic()

    def process(self) -> ProcessSnapshot:
        site, gw, kid, config, state_dir = self._ident
        return ProcessSnapshot(
            site=site,
            id=gw,
            kid=kid,
            version=__version__,
            versions=self._versions,
            pid=os.getpid(),
            uptime_s=round(time.monotonic() - self._started, 1),
            config=config,
            state_dir=state_dir,
        )

    def delivery(self) -> DeliverySnapshot:
        return delivery_snapshot(self._relay, self._primary, self._secondary)

    def queue(self) -> QueueSnapshot:
        """The queue from the daemon's own outbox connection (on the event loop)."""
        return queue_snapshot(self._relay.outbox, self._relay.memory_only_count())

    def supervisor(self) -> SupervisorSnapshot:
        sup = self._supervisor
        return SupervisorSnapshot(
            loops=tuple(
                LoopSnapshot(name, int(n), sup.last_failure.get(name))
                for name, n in sorted(sup.restarts.items())
            )
        )

    def inputs(self) -> tuple[InputSnapshot, ...]:
        return input_snapshots(
            self._buttons, self._boxes, dict(self._relay.raised_by), self.supervisor()
        )

    def liveness(self) -> Liveness:
        """Single attribute reads only: safe on any thread while the event loop is stuck."""
        now = time.monotonic()
        loops = []
        for name, tick in self._ticks.items():
            task = self._supervisor.running.get(name)
            last = tick()
            loops.append(
                LoopLiveness(
                    name=name,
                    running=task is not None and not task.done(),
                    tick_age_s=round(now - last, 3) if last else None,
                )
            )
        second = self._secondary
        return Liveness(
            loops=tuple(loops),
            connected=self._primary.connected or (second is not None and second.connected),
            broker=f"{self._primary.settings.host}:{self._primary.settings.port}",
            last_error=self._primary.last_error,
            memory_only=self._relay.memory_only_count(),
            outbox=self._outbox_path,
            min_free_bytes=self._min_free_bytes,
        )


class GatewaySnapshots:
    """The ``SnapshotSource`` of a running gateway: the core's snapshots and, once the
    monitors run, theirs (``monitors``, set by the daemon)."""

    def __init__(self, core: CoreSnapshots) -> None:
        self.core = core
        self.monitors: Callable[[], MonitorsSnapshot] | None = None

    def snapshot(self) -> GatewaySnapshot:
        core = self.core
        monitors = self.monitors
        return GatewaySnapshot(
            process=core.process(),
            delivery=core.delivery(),
            inputs=core.inputs(),
            monitors=monitors() if monitors is not None else None,
            supervisor=core.supervisor(),
        )

    def liveness(self) -> Liveness:
        return self.core.liveness()
