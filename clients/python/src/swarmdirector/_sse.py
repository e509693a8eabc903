"""A server-sent events parser (the WHATWG HTML "event stream
interpretation": `event:`, `data:` (joined by newlines), `id:`, comment lines
starting with `:` ignored, a blank line dispatches)."""

from __future__ import annotations

from typing import List, Optional, Tuple

Raw = Tuple[str, str, Optional[str]]  # event name, data, id


class SseParser:
    def __init__(self) -> None:
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None

    def feed(self, line: str) -> Optional[Raw]:
        """Takes one line (without its line ending); returns an event when
        the line completes one."""
        if line == "":
            if not self._data and not self._event:
                return None
            out = (self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return out
        if line.startswith(":"):
            return None  # a comment: swarmd's keep-alive
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None
