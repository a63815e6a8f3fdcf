"""Split documents into overlapping windows of tokens, counted with the embedding model's own
tokenizer, so that a chunk never exceeds what the model reads (a longer one would be silently
truncated by the model and its tail would never be found).

Chunks are slices of the original text (by the tokenizer's character offsets), never decoded
tokens: what a search returns and what the prompt quotes is exactly what was ingested.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_WORD = re.compile(r"\S+")


class Tokenizer(Protocol):
    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character (start, end) of each token, special tokens excluded."""
        ...


class WordTokenizer:
    """Whitespace words: the fallback when no tokenizer is configured (counts are approximate)."""

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]


class HfTokenizer:
    """A Hugging Face ``tokenizer.json`` (the fast tokenizers library: no torch, no transformers)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        self._tok = _Tokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()

    def spans(self, text: str) -> list[tuple[int, int]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        return [(s, e) for s, e in encoding.offsets if e > s]


def load_tokenizer(name: str | None) -> Tokenizer:
    """A local directory, a tokenizer.json file, or a hub id (from the local hub cache)."""
    if not name:
        return WordTokenizer()
    path = Path(name)
    if path.is_file():
        return HfTokenizer(path)
    if path.is_dir():
        return HfTokenizer(path / "tokenizer.json")
    from huggingface_hub import snapshot_download

    # HF_HUB_OFFLINE is read here, explicitly: the generator client turns the hub library's global
    # offline switch off for this process (see generator.py).
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    local = snapshot_download(repo_id=name, allow_patterns=["tokenizer.json"], local_files_only=offline)
    return HfTokenizer(Path(local) / "tokenizer.json")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    tokens: int
    start: int  # character offset in the document


def _continues_word(text: str, spans: list[tuple[int, int]], i: int) -> bool:
    """Token ``i`` continues the previous token's word (a "##suffix" word piece)."""
    if i == 0 or i >= len(spans):
        return False
    start, prev_end = spans[i][0], spans[i - 1][1]
    return start == prev_end and start > 0 and text[start - 1].isalnum() and text[start].isalnum()


def _word_start(text: str, spans: list[tuple[int, int]], i: int, floor: int) -> int:
    """The nearest token at or before ``i`` (but after ``floor``) that starts a word."""
    j = i
    while j > floor and _continues_word(text, spans, j):
        j -= 1
    return j if j > floor else i


def chunk_text(text: str, tokenizer: Tokenizer, size: int, overlap: int) -> list[Chunk]:
    """Windows of at most ``size`` tokens, each starting about ``size - overlap`` tokens after the
    previous one. Window edges move back to word starts: a window cut inside a word would
    re-tokenize differently (its first piece loses the ``##``) and could exceed ``size``."""
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    spans = tokenizer.spans(text)
    if not spans:
        return []
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = min(start + size, len(spans))
        if end < len(spans):
            end = _word_start(text, spans, end, start)
        piece = text[spans[start][0] : spans[end - 1][1]]
        chunks.append(Chunk(index=len(chunks), text=piece, tokens=end - start, start=spans[start][0]))
        if end >= len(spans):
            return chunks
        start = max(_word_start(text, spans, end - overlap, start), start + 1)


def count_tokens(text: str, tokenizer: Tokenizer) -> int:
    return len(tokenizer.spans(text))
