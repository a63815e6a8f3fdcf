"""The prompt: instructions, then retrieved sources fenced as untrusted data, then the question,
within a token budget for the context.

Prompt-injection hygiene: every source sits inside ``<source n="…">…</source>`` and the
instructions say sources are data, never instructions; a source cannot close its own fence early
because any ``<source``/``</source`` text inside it is defused. This does not make injection
impossible (nothing does), but it keeps retrieved text from posing as the system's own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .chunking import Tokenizer, count_tokens
from .config import PromptConfig
from .store import Hit

_FENCE = re.compile(r"<(/?)(source)", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(system|context|question)\}")


def defuse(text: str) -> str:
    """Make fence-like tags in retrieved text inert (``<source`` → ``&lt;source``)."""
    return _FENCE.sub(lambda m: "&lt;" + m.group(1) + m.group(2), text)


def fence(number: int, hit: Hit) -> str:
    doc = defuse(hit.doc_id).replace('"', "'")
    return f'<source n="{number}" doc_id="{doc}">\n{defuse(hit.text)}\n</source>'


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str  # context + question: the user message for chat endpoints
    text: str  # the whole prompt for completion (TGI) endpoints
    sources_used: int


def build_prompt(cfg: PromptConfig, question: str, hits: list[Hit], tokenizer: Tokenizer) -> Prompt:
    """Sources in rank order while they fit ``max_context_tokens``; the first one is cut to fit."""
    budget = cfg.max_context_tokens
    blocks: list[str] = []
    for hit in hits:
        block = fence(len(blocks) + 1, hit)
        cost = count_tokens(block, tokenizer)
        if cost > budget:
            if blocks:
                break
            # Even the best source alone is too long: keep its beginning.
            spans = tokenizer.spans(hit.text)
            keep = max(0, budget - (cost - len(spans)))
            cut = hit.text[: spans[keep - 1][1]] if keep else ""
            block = fence(1, Hit(hit.id, hit.doc_id, hit.chunk_index, cut, hit.metadata, hit.score))
            cost = budget
        blocks.append(block)
        budget -= cost
    context = "\n\n".join(blocks) if blocks else "(no sources were found)"
    values = {"system": cfg.system, "context": context, "question": defuse(question)}
    # One pass: text inside a source or the question that looks like "{question}" stays as it is.
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], cfg.template)
    user = _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) != "system" else "", cfg.template).strip()
    return Prompt(system=cfg.system, user=user, text=text, sources_used=len(blocks))
