"""Streamed text at a cost per token that does not grow with the answer.

Incremental detokenization as vLLM does it (prefix and read offsets): each new token decodes
only the few tokens since the last complete piece of text, and text is released only when it
does not end in an incomplete UTF-8 sequence. Stop strings are searched in the new text and
the few characters before it that could start one, and text that could still begin a stop
string is held back until it cannot (so a stop string is never streamed, even in part).
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tok, skip_ids=frozenset(), stops: list[str] | tuple[str, ...] = (),
                 include_stop: bool = False):
        self.tok, self.skip, self.stops = tok, frozenset(skip_ids), [s for s in stops if s]
        self.include_stop = include_stop  # keep the stop string (vLLM's option)
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # chars a stop may span
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] decoded to text already released
        self.text = ""  # all text decoded so far (cut at a stop string)
        self.sent = 0  # characters of `text` released
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _new_text(self) -> str:
        """Text the latest token completes ('' while it ends mid-character)."""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]

    def push(self, token: int) -> str:
        """The text to release after `token` ('' if none yet); sets `stopped` at a stop string."""
        if self.stopped or token in self.skip:
            return ""
        self.ids.append(token)
        return self._append(self._new_text(), self.hold)

    def finish(self) -> str:
        """The rest: text held back while it could have begun a stop string, and a last
        incomplete UTF-8 sequence as the replacement characters a whole decode gives."""
        if not self.stopped:
            before = self._decode(self.ids[self.prefix:self.read])
            tail = self._decode(self.ids[self.prefix:])[len(before):]
            self.prefix = self.read = len(self.ids)
            return self._append(tail, 0)
        return self._release(len(self.text))

    def _append(self, new: str, hold: int) -> str:
        """Add decoded text, cut it at a stop string, release all but `hold` characters."""
        if not new:
            return self._release(len(self.text) - hold)
        start = max(0, len(self.text) - self.hold)
        self.text += new
        hits = [(i, i + len(s) if self.include_stop else i)
                for i, s in ((self.text.find(s, start), s) for s in self.stops) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)[1]], True
            return self._release(len(self.text))
        return self._release(len(self.text) - hold)

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:upto], upto
        return out
