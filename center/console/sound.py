"""The board's alert sound: a short two-tone WAV made with the standard library."""

from __future__ import annotations

import io
import math
import struct
import wave
from functools import cache

RATE = 16_000


@cache
def alert_wav() -> bytes:
    """Two 0.18 s beeps (960 Hz, 720 Hz), 16-bit mono."""
    frames = bytearray()
    for freq in (960.0, 720.0):
        n = int(RATE * 0.18)
        for i in range(n):
            fade = min(1.0, i / 200, (n - i) / 200)
            sample = int(12_000 * fade * math.sin(2 * math.pi * freq * i / RATE))
            frames += struct.pack("<h", sample)
        frames += b"\0\0" * int(RATE * 0.06)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(bytes(frames))
    return out.getvalue()
