"""How the scaling study writes: compute multiples and notes as text, and files written atomically."""

from __future__ import annotations

import os


def format_multiple(s: float) -> str:
    """A compute multiple as arm ids and labels write it: 1, 2, 1.5."""
    return f"{s:g}"


def join_notes(*parts: str | None) -> str | None:
    """The non-empty notes joined with '; ', or None."""
    text = "; ".join(p for p in parts if p)
    return text or None


def write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically (a temporary file beside it, then a rename), creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))
