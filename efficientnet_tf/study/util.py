"""Small helpers of the scaling study: how durations and compute multiples read, and atomic file writes."""

from __future__ import annotations

import os


def format_duration(seconds: float) -> str:
    """A short human duration, as the training log writes it: 45s, 3m05s, 2h10m."""
    whole = max(0, int(round(seconds)))
    minutes, secs = divmod(whole, 60)
    hours, mins = divmod(minutes, 60)
    if not minutes:
        return f"{secs}s"
    return f"{minutes}m{secs:02d}s" if not hours else f"{hours}h{mins:02d}m"


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
