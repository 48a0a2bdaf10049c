"""The center's anti-replay and de-duplication state, in its embedded store (SQLite): which
(kid, seq, id) it accepted inside each signer's 65,536-seq window (PROTOCOL.md "Delivery
semantics"), each signer's highest seq, and each gateway's latest session. The rules live in
``center.store`` and apply the same way to the PostgreSQL store."""

from __future__ import annotations

from center.store.base import WINDOW
from center.store.sqlite import SqliteStore as CenterState

__all__ = ["WINDOW", "CenterState"]
