"""Synopsis cleaning: HTML entities and tags, IMDb author signatures, placeholders, whitespace."""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]*>")
_BREAK_TAG = re.compile(r"<\s*(br|/p|/div|/li)\b[^>]*>", re.IGNORECASE)
_AUTHOR_SUFFIX = re.compile(r"\s*::\s*[^:\n]{0,80}$")
_SPACE = re.compile(r"\s+")
# texts sites show where a plot is missing (IMDb title and plot pages, TMDB), after normalising
_PLACEHOLDER = re.compile(r"""^(?:
    add\ (?:a\ |the\ )?(?:plot|synopsis|summary)(?:\ in\ your\ language)?
  | (?:the\ )?plot\ (?:is\ )?(?:unknown|undisclosed|(?:kept\ )?under\ wraps)
    (?:\ (?:at|for)\ (?:this\ time|present|the\ moment|now))?
  | (?:the\ )?plot\ (?:summary\ )?(?:is\ )?(?:not\ available|coming\ soon)
  | no\ (?:overview|plot|synopsis|description)(?:\ summary)?(?:\ (?:found|available|yet))?
  | (?:it\ looks\ like\ )?we\ don't\ have\ (?:any|a|an)\ (?:plot|synopsis|overview)\b.*
  | n/?a | tba | tbd
)$""", re.VERBOSE)
_EDGE = " \t\n\u00a0.!»›…|-–—\"'"


def is_placeholder_plot(text: str) -> bool:
    """Whether ``text`` is a site's stand-in for a missing plot ("Add a Plot", "The plot is
    unknown.", TMDB's "We don't have an overview translated in English. ..."), not a plot."""
    norm = _SPACE.sub(" ", text.replace("\u2019", "'").lower()).strip(_EDGE)
    return not norm or bool(_PLACEHOLDER.match(norm))


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
    if is_placeholder_plot(text):
        return None
    return text
