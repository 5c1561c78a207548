"""Synopsis cleaning: HTML entities and tags, IMDb author signatures, whitespace."""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]*>")
_BREAK_TAG = re.compile(r"<\s*(br|/p|/div|/li)\b[^>]*>", re.IGNORECASE)
_AUTHOR_SUFFIX = re.compile(r"\s*::\s*[^:\n]{0,80}$")
_SPACE = re.compile(r"\s+")
# placeholder texts sites show instead of a plot
_PLACEHOLDERS = frozenset({
    "add a plot", "plot unknown", "plot undisclosed", "no overview found.", "no overview found",
    "we don't have an overview translated in english.", "n/a",
})


def clean_synopsis(raw: object) -> str | None:
    """Plain text from a site's synopsis, or None when nothing useful is left.

    Unescapes HTML entities (twice at most, for double-escaped feeds), drops tags, an IMDb-style
    ``::author`` signature at the end and placeholder texts, and collapses whitespace.
    """
    if raw is None or not isinstance(raw, str):
        return None
    text = raw
    for _ in range(2):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _BREAK_TAG.sub(" ", text)
    text = _TAG.sub("", text)
    text = _AUTHOR_SUFFIX.sub("", text)
    text = _SPACE.sub(" ", text.replace("\u00a0", " ")).strip()
    if not text or text.lower() in _PLACEHOLDERS:
        return None
    return text
