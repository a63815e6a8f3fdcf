"""API keys with names, read from a mounted Secret and re-read when it changes, so a key can be
rotated without a restart: add the new key, move clients over, remove the old one.

The file has one key per line, either ``name:key`` or a bare key (named ``key-<first 8 hex of its
sha256>``, so audit records never carry the key itself). Kubernetes updates a mounted Secret by
swapping a symlink: the file's identity (inode, mtime, size) is checked at most once a second.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("llmops.auth")
CHECK_EVERY = 1.0


def parse_keys(text: str) -> dict[str, str]:
    """name -> key. Blank lines and ``#`` comments are skipped."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = line.partition(":")
        if not sep or not key.strip() or " " in name.strip():
            name, key = "key-" + hashlib.sha256(line.encode()).hexdigest()[:8], line
        keys[name.strip()] = key.strip()
    return keys


class ApiKeys:
    def __init__(self, path: str | None = None, inline: str | None = None) -> None:
        self.path = Path(path) if path else None
        self.inline = parse_keys(inline) if inline else {}
        self._keys: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._load()

    def _identity(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()  # follows the Secret volume's symlinks
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> None:
        stamp = self._identity()
        keys = dict(self.inline)
        if self.path is not None:
            try:
                keys.update(parse_keys(self.path.read_text()))
            except OSError as exc:
                # Mid-rotation the file can vanish for an instant: keep the keys we had.
                log.warning("cannot read the API key file; keeping the current keys", extra={"error": str(exc)})
                return
        if self._stamp is not None and keys.keys() != self._keys.keys():
            log.info("API keys reloaded", extra={"names": sorted(keys)})
        self._keys, self._stamp = keys, stamp

    def refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < CHECK_EVERY:
            return
        with self._lock:
            self._checked = now
            if self._identity() != self._stamp:
                self._load()

    @property
    def enabled(self) -> bool:
        return bool(self.inline) or self.path is not None

    def identify(self, presented: str) -> str | None:
        """The name of the key presented, or None. Compares with every key in constant time."""
        self.refresh()
        found = None
        for name, key in self._keys.items():
            if hmac.compare_digest(presented.encode(), key.encode()):
                found = name
        return found

    def names(self) -> list[str]:
        self.refresh()
        return sorted(self._keys)

    # A list of key strings, for code that only asks "is this one of them?".
    def __iter__(self) -> Iterator[str]:
        self.refresh()
        return iter(list(self._keys.values()))

    def __bool__(self) -> bool:
        return self.enabled
