"""Where a key sits in a TOML text: ``tomllib`` keeps no positions, so ``Locator``
re-scans the text to map a key path such as ``("button", 1, "pin")`` back to its line
(for ``gateway/config.py``'s one-line errors)."""

from __future__ import annotations

import bisect
import re

Loc = tuple[str | int, ...]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\n#]*")  # a number, bool or date: up to the next delimiter


class Locator:
    """Maps key paths to 1-based line numbers by scanning the TOML text: ``[table]`` and
    ``[[array.of.tables]]`` headers (counting array indexes), ``key =`` lines including dotted
    keys, and the items of arrays and inline tables. Best effort: the text has parsed
    already, so on anything unexpected it skips to the next line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[Loc, int] = {}
        self._newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        self._arrays: dict[Loc, int] = {}  # array-of-tables path -> elements so far
        self._scan()

    def line(self, loc: Loc) -> int:
        """Line of ``loc`` or of its nearest recorded ancestor (a missing key → its table)."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return 1

    def _lineno(self) -> int:
        return bisect.bisect_left(self._newlines, self.pos) + 1

    def _peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def _skip_blank(self, *, newlines: bool) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "#":
                self._skip_line(keep_newline=True)
            elif ch in " \t\r" or (newlines and ch == "\n"):
                self.pos += 1
            else:
                return

    def _skip_line(self, *, keep_newline: bool = False) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + (0 if keep_newline else 1)

    def _string(self) -> str:
        quote = self._peek()
        if self._peek(3) == quote * 3:
            end = self.text.find(quote * 3, self.pos + 3)
            end = len(self.text) if end < 0 else end
            while self.text[end + 3 : end + 4] == quote:  # up to two quotes may end the value
                end += 1
            value, self.pos = self.text[self.pos + 3 : end], end + 3
            return value
        i = self.pos + 1
        while i < len(self.text) and self.text[i] not in (quote, "\n"):
            i += 2 if quote == '"' and self.text[i] == "\\" else 1
        value, self.pos = self.text[self.pos + 1 : i], i + 1
        return value

    def _key(self) -> tuple[str, ...] | None:
        parts: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            if self._peek() in ('"', "'"):
                parts.append(self._string())
            elif match := _BARE_KEY.match(self.text, self.pos):
                parts.append(match.group())
                self.pos = match.end()
            else:
                return None
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1

    def _record(self, loc: Loc, line: int) -> None:
        for n in range(1, len(loc) + 1):
            self.lines.setdefault(loc[:n], line)

    def _scan(self) -> None:
        table: Loc = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self._lineno()
            if self._peek() == "[":
                array = self._peek(2) == "[["
                self.pos += 2 if array else 1
                keys = self._key()
                table = self._header(keys, array=array, line=line) if keys else table
            elif (keys := self._key()) is not None and self._peek() == "=":
                self.pos += 1
                self._record(table + keys, line)
                self._value(table + keys)
            self._skip_line()

    def _header(self, keys: tuple[str, ...], *, array: bool, line: int) -> Loc:
        resolved: Loc = ()
        for i, key in enumerate(keys):
            resolved += (key,)
            if array and i == len(keys) - 1:
                index = self._arrays.get(resolved, 0)
                self._arrays[resolved] = index + 1
                self._record(resolved, line)
                resolved += (index,)
            elif resolved in self._arrays:  # [a.b] after [[a]]: inside a's last element
                resolved += (self._arrays[resolved] - 1,)
        self.lines[resolved] = line
        return resolved

    def _value(self, loc: Loc) -> None:
        self._skip_blank(newlines=False)
        ch = self._peek()
        if ch in ('"', "'"):
            self._string()
        elif ch == "[":
            self.pos += 1
            index = 0
            while self.pos < len(self.text):
                self._skip_blank(newlines=True)
                if self._peek() == "]":
                    self.pos += 1
                    return
                start = self.pos
                self._record((*loc, index), self._lineno())
                self._value((*loc, index))
                self._skip_blank(newlines=True)
                if self._peek() == "," or self.pos == start:
                    self.pos += 1  # (or an unexpected character: make progress)
                index += 1
        elif ch == "{":
            self.pos += 1
            while self.pos < len(self.text) and self._peek() not in ("}", "\n"):
                line = self._lineno()
                keys = self._key()
                if keys is None or self._peek() != "=":
                    return
                self.pos += 1
                self._record(loc + keys, line)
                self._value(loc + keys)
                self._skip_blank(newlines=False)
                if self._peek() == ",":
                    self.pos += 1
                self._skip_blank(newlines=False)
            self.pos += 1
        elif match := _SCALAR.match(self.text, self.pos):
            self.pos = match.end()
