"""Incremental detokenisation: the text each new token adds, never half a character.

Byte-level tokenizers split characters they have no token for into bytes, so a token may end in
the middle of a UTF-8 sequence; decoding it alone gives U+FFFD. The decoder holds such tokens
back until the character is complete (the method TGI and vLLM use): it decodes a short window
of recent tokens with and without the new ones and emits the difference only when it does not
end in U+FFFD. A few prompt tokens start the window, for tokenizers (SentencePiece) whose
decoding of a token depends on what precedes it.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, decode: Callable[[list[int]], str], context: list[int]) -> None:
        self._decode = decode
        self._ids = list(context[-5:])  # the window: context, then tokens not yet emitted
        self._read = len(self._ids)  # where the tokens not yet emitted start

    def push(self, token_id: int) -> str:
        """The text ``token_id`` completes: "" while a character is still incomplete."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """What is still held back (an incomplete character at the end, as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[: self._read])
        after = self._decode(self._ids)
        if len(after) > len(before) and (final or not after.endswith(REPLACEMENT)):
            # The tokens just emitted are the next window's context; older ones are not needed.
            del self._ids[: self._read]
            self._read = len(self._ids)
            return after[len(before) :]
        if final:
            self._read = len(self._ids)
        return ""
