"""Documents to ingest, from requests or files: plain text, Markdown, HTML and JSON Lines
(optionally gzipped), from a directory walk or a list of files."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
JSONL = (".jsonl", ".jsonl.gz", ".ndjson")
MAX_DOC_ID = 512


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """What decides whether re-ingesting is needed: the text and the metadata."""
        digest = hashlib.sha256(self.text.encode())
        digest.update(b"\0" + json.dumps(self.metadata, sort_keys=True, default=str).encode())
        return digest.hexdigest()


class DocumentError(ValueError):
    pass


class _HtmlText(HTMLParser):
    """Visible text of an HTML page: scripts, styles and templates dropped, blocks on new lines."""

    SKIP = frozenset({"script", "style", "template", "noscript", "head", "title"})
    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(visible text, title)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = re.sub(r"[ \t\r\f\v]+", " ", "".join(parser.parts))
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return text.strip(), parser.title.strip()


def from_text(doc_id: str, content: str, fmt: str, metadata: dict[str, Any] | None = None) -> Document:
    metadata = dict(metadata or {})
    if fmt == "html":
        content, title = html_to_text(content)
        if title:
            metadata.setdefault("title", title)
    return Document(id=doc_id, text=content.strip(), metadata=metadata)


@dataclass(frozen=True)
class JsonlFields:
    """How JSON Lines records map to documents (BEIR-style corpora: ``_id``, ``title`` + ``text``)."""

    id: str = "id"
    text: tuple[str, ...] = ("text",)
    metadata: str | None = "metadata"
    keep: tuple[str, ...] = ()  # further fields copied into metadata


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def read_jsonl(path: Path, fields: JsonlFields) -> Iterator[Document]:
    for n, line in enumerate(_open_text(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{path}:{n}: not JSON: {exc.msg}") from None
        if not isinstance(record, dict) or fields.id not in record:
            raise DocumentError(f"{path}:{n}: expected an object with {fields.id!r}")
        text = " ".join(str(record[f]) for f in fields.text if record.get(f)).strip()
        metadata: dict[str, Any] = {}
        raw = record.get(fields.metadata) if fields.metadata else None
        if isinstance(raw, dict):
            metadata.update(raw)
        for key in fields.keep:
            if key in record:
                metadata[key] = record[key]
        yield Document(id=str(record[fields.id]), text=text, metadata=metadata)


def discover(sources: Sequence[Path]) -> list[Path]:
    """Files to read: the files given, and every supported file under the directories given."""
    found: list[Path] = []
    for source in sources:
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.is_file() and _kind(p))
        elif source.is_file():
            if not _kind(source):
                raise DocumentError(f"{source}: unsupported file type (txt, md, html, jsonl[.gz])")
            found.append(source)
        else:
            raise DocumentError(f"{source}: no such file or directory")
    return found


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL):
        return "jsonl"
    return FORMATS.get(path.suffix.lower())


def read_files(sources: Sequence[Path], fields: JsonlFields = JsonlFields()) -> Iterator[Document]:
    """Documents from files; a file's document id is its path relative to the directory given."""
    roots = [s for s in sources if s.is_dir()]
    for path in discover(sources):
        kind = _kind(path)
        if kind == "jsonl":
            yield from read_jsonl(path, fields)
            continue
        root = next((r for r in roots if path.is_relative_to(r)), path.parent)
        doc_id = path.relative_to(root).as_posix()
        content = path.read_text(encoding="utf-8", errors="replace")
        yield from_text(doc_id, content, kind or "text", {"source": doc_id, "format": kind})


def fetch_url(url: str, timeout: float = 30.0, max_bytes: int = 20 * 1024 * 1024) -> Document:
    """One document from a URL (for pipelines with egress): HTML by content type or extension,
    else text; the URL is the document id."""
    import httpx

    with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
        if response.status_code != 200:
            raise DocumentError(f"{url}: HTTP {response.status_code}")
        body = b""
        for part in response.iter_bytes():
            body += part
            if len(body) > max_bytes:
                raise DocumentError(f"{url}: larger than {max_bytes} bytes")
        kind = response.headers.get("content-type", "").split(";")[0].strip()
    text = body.decode(response.encoding or "utf-8", errors="replace")
    fmt = "html" if kind == "text/html" or url.lower().split("?")[0].endswith((".html", ".htm")) else "text"
    return from_text(url, text, fmt, {"source": url, "format": fmt})
