"""IMDb title pages of every layout since the 2000s: the poster URL and the raw plot text.

Sources, best first; a candidate that is empty, not http(s) or a site placeholder is skipped:

- poster: JSON-LD (the node describing the title: ``Movie``, ``TVSeries``, ``TVEpisode``,
  ``VideoGame``, ``CreativeWork``, ...; ``image`` as string, list or ``ImageObject``), ``og:image``,
  ``twitter:image``, ``<meta itemprop="image">``, ``<link rel="image_src">`` (2000s), the poster
  ``<img>`` in the page body (``itemprop="image"``, or inside a ``poster`` / ``img_primary`` /
  ``photo`` block), and last the Next.js ``__NEXT_DATA__`` JSON (``primaryImage.url``, 2020+).
- plot: JSON-LD ``description`` / ``abstract``, the plot element of the body
  (``itemprop="description"``, ``data-testid="plot*"``, ``summary_text``, 2000s ``Plot:`` block),
  the ``og:description`` / ``description`` meta tags without their "Directed by ... With ..."
  credits, and last ``__NEXT_DATA__`` ``plot.plotText.plainText``.

Poster URLs are normalised to the full-size image (:func:`full_size_image_url`).
"""

from __future__ import annotations

import codecs
import html
import json
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

TITLE_TYPES = frozenset({
    "Movie", "TVSeries", "TVEpisode", "TVSeason", "TVMovie", "TVMiniSeries", "TVSpecial", "Episode",
    "VideoGame", "CreativeWork", "CreativeWorkSeries", "MovieSeries", "MusicVideoObject",
})
_TT = re.compile(r"/title/(tt\d{7,})")
_V1 = re.compile(r"\._V1(?:[._,A-Za-z0-9-]*?)(\.[A-Za-z0-9]{2,5})$")
# IMDb's "no poster" images and site logos; /images/G/ holds site assets, posters live in /images/M/
_PLACEHOLDER = re.compile(
    r"nopicture|no[_-]?poster|no[_-]?image|addposter|imdb[_-]?(?:fb[_-]?)?logo|/logos?/|"
    r"/images/social/|placeholder|spacer\.gif|/images/G/\d+/imdb/", re.IGNORECASE)
_META_IMAGE_KEYS = ("og:image", "og:image:url", "og:image:secure_url", "twitter:image",
                    "twitter:image:src", "itemprop:image", "itemprop:thumbnailurl")
_META_TEXT_KEYS = ("og:description", "twitter:description", "itemprop:description", "description")
_PLOT_TESTID = re.compile(r"^plot(?:-[\w-]+)?$")
_PLOT_HEADING = re.compile(r"^\s*plot(?: outline| summary)?\s*:?\s*$", re.IGNORECASE)
_POSTER_IDS = frozenset({"img_primary", "poster", "primary-poster", "title-overview-poster"})
_LINK_PHRASE = re.compile(r"^\s*(?:see (?:full )?(?:summary|synopsis|more)|full summary|"
                          r"read (?:all|more)|more|add (?:a )?(?:plot|synopsis)|edit)\s*[»›]?\s*$",
                          re.IGNORECASE)
_WRITTEN_BY = re.compile(r"\s*[—-]?\s*Written by\s+[^.]{0,80}$")
_CREDITS = re.compile(r"^(?:.{0,200}?:\s+)?(?=(?:Directed|Created) by\s|With\s)", re.DOTALL)
_NAME = re.compile(r"^[A-Z\u00c0-\u024f][^,]{0,60}$")
_PREFIXES = frozenset({"dr", "mr", "mrs", "ms", "st", "mt", "ft", "sgt", "lt", "capt"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"})


@dataclass
class PageInfo:
    """Poster URL and raw description found on a title page (None when absent)."""

    image: str | None
    description: str | None


def full_size_image_url(url: str) -> str:
    """The full-size version of an IMDb/Amazon image URL.

    IMDb serves resized copies by adding modifiers after ``._V1``: ``...@._V1_UX182_CR0,0,182,268_
    AL_.jpg`` (crop and scale), ``...._V1._SX100_SY140_.jpg`` (2000s) or ``..._V1_QL75_UY281_.jpg``.
    Dropping them (``...@._V1_.jpg``) gives the original upload. Other URLs come back unchanged.
    """
    parts = urlsplit(url)
    head, sep, name = parts.path.rpartition("/")
    full = _V1.sub(r"._V1_\1", name)
    if full == name:
        return url
    return urlunsplit(parts._replace(path=f"{head}{sep}{full}"))


def is_placeholder_image(url: str) -> bool:
    """Whether ``url`` is a generic image (IMDb logo, "no picture", "add poster"), not a poster."""
    return bool(_PLACEHOLDER.search(urlsplit(url).path))


def decode_page(body: bytes, content_type: str = "") -> str:
    """Text of an HTML page in the charset of the header, a BOM or a ``<meta>`` tag; undeclared,
    UTF-8 when the bytes are UTF-8, else cp1252 (pages of the 2000s)."""
    charset = _header_charset(content_type)
    if charset is None and body.startswith(b"\xef\xbb\xbf"):
        charset = "utf-8-sig"
    if charset is None:
        m = re.search(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", body[:4096],
                      re.IGNORECASE)
        charset = m.group(1).decode("ascii") if m else None
    if charset is not None:
        try:
            latin = codecs.lookup(charset).name in ("latin-1", "iso8859-1", "ascii")
            return body.decode("cp1252" if latin else charset, errors="replace")
        except LookupError:
            pass  # an unknown charset name: guess
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("cp1252", errors="replace")


def _header_charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip("\"'")
    return None


def parse_title_page(page: str | bytes, page_url: str = "") -> PageInfo:
    """Poster URL (absolute, full size) and raw plot text of an IMDb title page of any layout."""
    text = decode_page(page) if isinstance(page, bytes) else page
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    base = page_url or parser.canonical or "https://www.imdb.com/"
    ids = {m.group(1) for u in (page_url, parser.canonical, *parser.meta.get("og:url", []))
           if u and (m := _TT.search(u))}
    ld_image, ld_text = _from_json_ld(parser.json_ld, ids)
    next_image, next_text = _from_next_data(parser.next_data, ids)
    meta = parser.meta
    images = [ld_image, *(u for k in _META_IMAGE_KEYS for u in meta.get(k, [])),
              *parser.link_images, *parser.body_images, next_image]
    image = next((u for c in images if c and (u := _usable_image(c, base))), None)
    texts = [ld_text, *parser.body_texts,
             *(_plot_of_meta(t) for k in _META_TEXT_KEYS for t in meta.get(k, [])), next_text]
    description = next((t.strip() for t in texts if isinstance(t, str) and t.strip()), None)
    return PageInfo(image, description)


def _usable_image(candidate: str, base: str) -> str | None:
    url = html.unescape(candidate.strip()) if "&" in candidate else candidate.strip()
    url = urljoin(base, url)
    if urlsplit(url).scheme.lower() not in ("http", "https") or is_placeholder_image(url):
        return None
    return full_size_image_url(url)


def _plot_of_meta(text: str) -> str | None:
    """A meta description without its leading credits ("Title: Directed by X. With A, B. Plot");
    None when no plot is left or the text is metadata such as "2h 22m | R"."""
    m = _CREDITS.match(text)
    if m:
        rest = text[m.end():]
        if rest.startswith(("Directed by", "Created by")):
            rest = _split_sentence(rest.split(" by", 1)[1])[1]
        names, tail = _split_sentence(rest[5:]) if rest.startswith("With ") else ("", rest)
        if all(_NAME.match(n.strip()) for n in names.split(",")):
            rest = tail
        if rest != text[m.end():]:
            text = rest
    words = re.findall(r"[^\W\d_]{2,}", text)
    segments = [s for s in text.split("|") if s.strip()]
    if len(words) < 2 or (len(segments) > 1 and all(len(s.split()) <= 3 for s in segments)):
        return None
    return text


def _split_sentence(text: str) -> tuple[str, str]:
    """``text`` split after the first period that ends a sentence: not after an initial ("Samuel
    L. Jackson") or a title before a name ("Dr. Dre"); "Jr." and "Jr.." end one."""
    for m in re.finditer(r"\.+(?:\s+|$)", text):
        word = re.search(r"([\w'-]+)$", text[:m.start()])
        token = word.group(1) if word else ""
        if m.group().count(".") > 1 or (len(token) > 1 and token.lower() not in _PREFIXES):
            return text[:m.start()], text[m.end():]
    return text, ""


# --------------------------------------------------------------------------- JSON sources


def _load_json(raw: str) -> Any:
    """JSON from a script body: comment/CDATA wrappers, raw control characters and HTML-escaped
    JSON are tolerated; None when it still does not parse."""
    text = re.sub(r"^\s*(?:<!--|//\s*<!\[CDATA\[|<!\[CDATA\[)|(?://\s*\]\]>|\]\]>|-->)\s*$", "",
                  raw.strip())
    for attempt in (text, html.unescape(text)):
        try:
            return json.loads(attempt, strict=False)
        except ValueError:
            continue
    return None


def _from_json_ld(scripts: list[str], ids: set[str]) -> tuple[str | None, str | None]:
    nodes = [n for raw in scripts for n in _flatten(_load_json(raw))]
    by_id = {n["@id"]: n for n in nodes if isinstance(n.get("@id"), str) and len(n) > 1}
    titles = [n for n in nodes if _types(n) & TITLE_TYPES]
    titles.sort(key=lambda n: _identity_rank(n, ids))  # stable: page order otherwise
    image = next((u for n in titles if (u := _image_url(n.get("image"), by_id))), None)
    text = next((t for n in titles for k in ("description", "abstract")
                 if (t := _text(n.get(k)))), None)
    return image, text


def _flatten(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return [n for item in data for n in _flatten(item)]
    if isinstance(data, dict):
        graph = data.get("@graph")
        return [data, *_flatten(graph)] if graph is not None else [data]
    return []


def _types(node: dict[str, Any]) -> set[str]:
    t = node.get("@type")
    names = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(
        t, list) else []
    return {re.split(r"[/:#]", n)[-1] for n in names}


def _identity_rank(node: dict[str, Any], ids: set[str]) -> int:
    """0: names this page's title; 1: names no title; 2: names another title."""
    named = {m.group(1) for k in ("url", "@id") if isinstance(node.get(k), str)
             and (m := _TT.search(node[k]))}
    return 1 if not named or not ids else 0 if named & ids else 2


def _image_url(value: Any, by_id: dict[str, dict[str, Any]]) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list):
        return next((u for v in value if (u := _image_url(v, by_id))), None)
    if isinstance(value, dict):
        if set(value) == {"@id"}:
            value = by_id.get(value["@id"], {})
        return next((u for k in ("url", "contentUrl") if (u := _image_url(value.get(k), by_id))),
                    None)
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, dict):
        return _text(value.get("@value"))
    if isinstance(value, list):
        return next((t for v in value if (t := _text(v))), None)
    return None


def _from_next_data(raw: str | None, ids: set[str]) -> tuple[str | None, str | None]:
    """``primaryImage.url`` and ``plot.plotText.plainText`` of the title's node in Next.js data
    (the node whose ``id`` is this page's title, else the shallowest one)."""
    data = _load_json(raw) if raw else None
    nodes = [n for n in _walk(data) if "primaryImage" in n or "plot" in n]
    nodes.sort(key=lambda n: 0 if n.get("id") in ids else 1)
    image = next((u for n in nodes if isinstance(p := n.get("primaryImage"), dict)
                  and isinstance(u := p.get("url"), str) and u.strip()), None)
    text = next((t for n in nodes if (t := _dig(n, "plot", "plotText", "plainText"))), None)
    return image, text


def _walk(data: Any) -> Iterator[dict[str, Any]]:
    """Every dict in ``data``, breadth first."""
    queue: deque[Any] = deque([data])
    while queue:
        item = queue.popleft()
        if isinstance(item, dict):
            yield item
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)


def _dig(node: Any, *keys: str) -> str | None:
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return _text(node)


# --------------------------------------------------------------------------- HTML


@dataclass
class _Capture:
    tag: str
    depth: int = 1
    parts: list[str] = field(default_factory=list)
    link: list[str] | None = None  # text of the <a> being read, dropped when it is a "more" link


class _PageParser(HTMLParser):
    """One pass over the page: scripts, meta and link tags, poster images and plot elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.json_ld: list[str] = []
        self.next_data: str | None = None
        self.meta: dict[str, list[str]] = {}
        self.link_images: list[str] = []
        self.canonical: str | None = None
        self.body_images: list[str] = []
        self.body_texts: list[str] = []
        self._script: list[str] | None = None
        self._script_kind = ""
        self._raw: str | None = None  # inside <script>, <style>...: not page text
        self._seen_poster = False
        self._blocks: list[tuple[str, bool]] = []  # open elements: (tag, marks a poster block)
        self._capture: _Capture | None = None
        self._heading: list[str] | None = None
        self._plot_next = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "script":
            kind = a.get("type", "").strip().lower()
            if kind == "application/ld+json" or a.get("id") == "__NEXT_DATA__":
                self._script, self._script_kind = [], "ld" if "ld+json" in kind else "next"
        elif tag == "meta":
            self._meta(a)
        elif tag == "link":
            rels = a.get("rel", "").lower().split()
            if "image_src" in rels and a.get("href"):
                self.link_images.append(a["href"])
            if "canonical" in rels and a.get("href"):
                self.canonical = a["href"]
        elif tag == "img":
            self._img(a)
        elif tag == "h5":
            self._heading = []
        if self._capture is not None:
            self._capture_start(tag)
        elif tag not in _VOID:
            self._maybe_capture(tag, a)
        if tag in ("script", "style", "noscript", "template"):
            self._raw = tag
        if tag not in _VOID:
            testid = a.get("data-testid", "")
            marks = ("poster" in a.get("class", "").split() or a.get("id", "") in _POSTER_IDS
                     or a.get("name") == "poster" or ("hero" in testid and "poster" in testid))
            self._blocks.append((tag, marks))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:  # a self-closed <div/> and the like are empty: nothing to do
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._raw:
            self._raw = None
        if tag == "script" and self._script is not None:
            body = "".join(self._script)
            if self._script_kind == "ld":
                self.json_ld.append(body)
            elif self.next_data is None:
                self.next_data = body
            self._script = None
        elif tag == "h5" and self._heading is not None:
            self._plot_next = bool(_PLOT_HEADING.match("".join(self._heading)))
            self._heading = None
        if self._capture is not None:
            self._capture_end(tag)
        for i in range(len(self._blocks) - 1, -1, -1):  # tolerate unclosed children
            if self._blocks[i][0] == tag:
                del self._blocks[i:]
                break

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)
            return
        if self._raw is not None:
            return
        if self._heading is not None:
            self._heading.append(data)
        cap = self._capture
        if cap is not None:
            (cap.link if cap.link is not None else cap.parts).append(data)

    def _meta(self, a: dict[str, str]) -> None:
        if "content" not in a:
            return
        keys = {a.get("property", ""), a.get("name", "")} | (
            {"itemprop:" + a["itemprop"]} if a.get("itemprop") else set())
        for key in keys:
            if key.strip():
                self.meta.setdefault(key.strip().lower(), []).append(a["content"])

    def _img(self, a: dict[str, str]) -> None:
        in_block = any(marks for _, marks in self._blocks)
        if self._seen_poster or not (in_block or a.get("itemprop", "").lower() == "image"):
            return  # only the first: later ones belong to other titles ("more like this")
        self._seen_poster = True
        srcset = a.get("srcset", "").split(",")[0].split()
        for src in (a.get("src", ""), a.get("loadlate", ""), a.get("data-src", ""),
                    srcset[0] if srcset else ""):
            if src.strip() and not src.strip().lower().startswith("data:"):
                self.body_images.append(src)
                return

    def _maybe_capture(self, tag: str, a: dict[str, str]) -> None:
        classes = a.get("class", "").split()
        plot = (a.get("itemprop", "").lower() == "description"
                or bool(_PLOT_TESTID.match(a.get("data-testid", "")))
                or "summary_text" in classes
                or (self._plot_next and "info-content" in classes))
        if plot:
            self._capture = _Capture(tag)
            self._plot_next = False

    def _capture_start(self, tag: str) -> None:
        cap = self._capture
        assert cap is not None
        if tag == cap.tag:
            cap.depth += 1
        elif tag == "a":
            cap.link = []
        elif tag in ("br", "p", "div", "li"):
            cap.parts.append(" ")

    def _capture_end(self, tag: str) -> None:
        cap = self._capture
        assert cap is not None
        if tag == "a" and cap.link is not None:
            text = "".join(cap.link)
            if not _LINK_PHRASE.match(text):
                cap.parts.append(text)
            cap.link = None
        elif tag == cap.tag:
            cap.depth -= 1
            if cap.depth == 0:
                self._capture = None
                text = _WRITTEN_BY.sub("", " ".join("".join(cap.parts).split()))
                text = text.rstrip(" |»›\u00a0")
                if text:
                    self.body_texts.append(text)
