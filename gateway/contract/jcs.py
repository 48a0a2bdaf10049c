"""RFC 8785 JSON Canonicalization Scheme, fast enough for the alarm path.

The ``rfc8785`` package is the reference we test against (tests/test_jcs.py: vectors and
property tests over arbitrary JSON values must give identical bytes), but it writes one
character at a time and costs ~40 µs per envelope, hot; this costs a fraction of that by
leaning on the C ``json`` encoder for strings, which escapes exactly as ECMAScript's
``JSON.stringify`` does when ``ensure_ascii=False`` (RFC 8785 §3.2.2.2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, NoReturn

MAX_SAFE = 2**53 - 1  # RFC 8785 §3.2.2.3 / I-JSON: integers beyond this are out of domain

_str = json.JSONEncoder(ensure_ascii=False).encode


def _not_json(value: object) -> NoReturn:
    raise CanonicalizationError(f"{type(value).__name__} is not a JSON value")


# The whole value in C, for values where its output is already canonical (see ``_plain``).
# The C encoder is made once (``JSONEncoder.encode`` builds one per call: ~4 µs here);
# no circular-reference markers: ``_plain`` has already walked the value.
if c_make_encoder is not None:  # CPython's _json
    _c_whole = c_make_encoder(
        None, _not_json, encode_basestring, None, ":", ",", True, False, False
    )

    def _whole(obj: Any) -> str:
        return "".join(_c_whole(obj, 0))

else:  # pragma: no cover - a Python without the C accelerator
    _whole = json.JSONEncoder(
        ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode  # type: ignore[assignment]


class CanonicalizationError(ValueError):
    """A value JCS cannot represent (NaN, infinity, huge integer, lone surrogate, non-str key)."""


def dumps(obj: Any) -> bytes:
    """The canonical UTF-8 bytes of ``obj``."""
    try:
        return (_whole(obj) if _plain(obj) else _enc(obj)).encode("utf-8")
    except UnicodeEncodeError as err:
        raise CanonicalizationError(f"string is not valid Unicode: {err.reason}") from None


def _plain(obj: Any) -> bool:
    """True when the C encoder (sorted keys, compact) already writes ``obj`` canonically:
    plain dicts, lists, strings, true/false/null, I-JSON integers, object keys in ASCII (where
    code point order is UTF-16 order) and floats that Python's repr writes as ECMAScript
    does (not integral, 1e-4 <= |x| < 1e16: no exponent in either, same shortest digits).
    Anything else takes the general path (``_enc``)."""
    t = type(obj)
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        return bool(-MAX_SAFE <= obj <= MAX_SAFE)
    if t is float:
        return bool(1e-4 <= abs(obj) < 1e16 and not obj.is_integer())
    if t is dict:
        for key, value in obj.items():
            if type(key) is not str or not key.isascii() or not _plain(value):
                return False
        return True
    if t is list or t is tuple:
        return all(map(_plain, obj))
    return False


def _utf16_key(key: str) -> bytes:
    # RFC 8785 §3.2.3: object members sorted by their names' UTF-16 code units.
    return key.encode("utf-16-be", "surrogatepass")


def _enc(obj: Any) -> str:
    if isinstance(obj, str):
        return _str(obj)
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if obj is None:
        return "null"
    if isinstance(obj, int):
        if -MAX_SAFE <= obj <= MAX_SAFE:
            return str(int(obj))
        raise CanonicalizationError(f"integer {obj} is outside the I-JSON range")
    if isinstance(obj, float):
        return es6_number(obj)
    if isinstance(obj, Mapping):
        for key in obj:
            if not isinstance(key, str):
                raise CanonicalizationError(f"object key {key!r} is not a string")
        items = sorted(obj.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(_str(k) + ":" + _enc(v) for k, v in items) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_enc(v) for v in obj) + "]"
    _not_json(obj)


def es6_number(value: float) -> str:
    """ECMAScript Number::toString (RFC 8785 §3.2.2.3) from Python's shortest round-trip repr."""
    if not math.isfinite(value):
        raise CanonicalizationError(f"{value} is not a finite number")
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    text = repr(abs(value))
    mantissa, _, exp_text = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # value = 0.<digits> x 10^n  (ECMAScript's k digits and n)
    n = len(whole.lstrip("0")) if whole.strip("0") else -(len(frac) - len(frac.lstrip("0")))
    n += int(exp_text or 0)
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp = ("+" if e >= 0 else "-") + str(abs(e))
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + exp
    return sign + out
