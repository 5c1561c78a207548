"""IMDb title pages of every layout since the 2000s: the title's own poster and its plot.

A wrong poster is worse than none, so only an image that the page marks as *this title's poster*
is taken, best first:

- the JSON-LD node describing this title (``Movie``, ``TVSeries``, ``TVEpisode``, ...; not a node
  that names another title): its ``image`` (string, list or ``ImageObject``), 2017+;
- the image in the page's poster slot (the first one on the page):
  ``data-testid="hero-media__poster"`` (2020+), ``<div class="poster">`` (2017-2020),
  ``id="img_primary"`` (2010-2016), ``<a name="poster">`` (2000s);
- the Next.js ``__NEXT_DATA__`` node of this title (its ``id`` is the page's ``tt`` id):
  ``primaryImage.url`` (2020+).

``og:image``, ``twitter:image`` and ``<link rel="image_src">`` are never used: on pages of titles
without a poster they hold a promotional still or the site's share logo. Site images (placeholders,
logos: anything on IMDb's image hosts outside ``/images/M/``) are refused wherever they appear.

The plot, best first: JSON-LD ``description`` / ``abstract`` of this title; the plot element of
the body (``data-testid="plot"``, ``summary_text``, ``itemprop="description"``, the 2010-2011 plain
paragraph under the rating in ``#overview-top``, the 2000s ``Plot:`` block); the storyline
(``canwrap``, after ``<h2>Storyline</h2>``, ``storyline-plot-summary``); ``og:description`` /
``description`` without their "Directed by ... With ..." credits; ``__NEXT_DATA__``
``plot.plotText.plainText`` of this title. Placeholders ("Add a Plot", "The plot is unknown.") are
skipped; "See full summary" / "full summary" link texts and author credits are dropped; a plot cut
short ("...") gives way to any complete one on the page (the storyline holds the full summary) and
is kept, cut, only when the page has nothing else.

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

from mmlens.enrich.text import is_placeholder_plot

TITLE_TYPES = frozenset({
    "Movie", "TVSeries", "TVEpisode", "TVSeason", "TVMovie", "TVMiniSeries", "TVSpecial", "Episode",
    "VideoGame", "CreativeWork", "CreativeWorkSeries", "MovieSeries", "MusicVideoObject",
})
_TT = re.compile(r"/title/(tt\d{7,})")
_TT_LINK = re.compile(r"(?<![A-Za-z0-9])(tt\d{7,})")  # /title/tt../mediaviewer, /media/rm../tt..
_V1 = re.compile(r"\._V1(?:[._,A-Za-z0-9-]*?)(\.[A-Za-z0-9]{2,5})$")
# IMDb's "no poster" images and site logos, on any host
_PLACEHOLDER = re.compile(
    r"nopicture|no[_-]?poster|no[_-]?image|addposter|imdb[_-]?(?:fb[_-]?)?logo|/logos?/|"
    r"/images/social/|placeholder|spacer\.gif", re.IGNORECASE)
# IMDb's image hosts keep title media under /images/M/; /images/G/ and /images/S/ are site assets
_IMDB_IMAGE_HOST = re.compile(r"(?:^|\.)(?:media-amazon|media-imdb|images-amazon|"
                              r"ssl-images-amazon)\.com$", re.IGNORECASE)
_META_TEXT_KEYS = ("og:description", "twitter:description", "itemprop:description", "description")
_PLOT_TESTID = re.compile(r"^plot(?:-[\w-]+)?$")
_STORYLINE_TESTID = re.compile(r"^storyline-plot-summary$")
_PLOT_HEADING = re.compile(r"^\s*plot(?: outline| summary)?\s*:?\s*$", re.IGNORECASE)
_STORYLINE_HEADING = re.compile(r"^\s*storyline\s*:?\s*$", re.IGNORECASE)
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
_CUT = ("...", "\u2026")  # a plot that ends so was cut short


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
    """Whether ``url`` is a site image (IMDb logo, "no picture", "add poster", a site asset on
    IMDb's image hosts), not a title's poster."""
    parts = urlsplit(url)
    if _IMDB_IMAGE_HOST.search(parts.hostname or "") and not parts.path.startswith("/images/M/"):
        return True
    return bool(_PLACEHOLDER.search(parts.path))


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
    """This title's poster URL (absolute, full size) and raw plot text from an IMDb title page of
    any layout; None where the page has no poster or no plot of its own."""
    text = decode_page(page) if isinstance(page, bytes) else page
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    base = page_url or parser.canonical or "https://www.imdb.com/"
    ids = {m.group(1) for u in (page_url, parser.canonical, *parser.meta.get("og:url", []))
           if u and (m := _TT.search(u))}
    ld_image, ld_text = _from_json_ld(parser.json_ld, ids)
    next_image, next_text = _from_next_data(parser.next_data, ids)
    # the page's poster slot: the first one that links to no other title ("more like this")
    slot = next((s for s in parser.poster_slots if not (ids and s.titles - ids)), None)
    posters = [ld_image, slot.image if slot else None, next_image]
    image = next((u for c in posters if c and (u := _usable_image(c, base))), None)
    plots = [ld_text, *parser.plots["summary"], *parser.plots["storyline"],
             *(_plot_of_meta(t) for k in _META_TEXT_KEYS for t in parser.meta.get(k, [])),
             next_text]
    return PageInfo(image, _best_plot(plots))


def _best_plot(candidates: list[str | None]) -> str | None:
    """The first complete plot among ``candidates``; a cut one ("...") only when none is."""
    plots = [t.strip() for t in candidates
             if isinstance(t, str) and t.strip() and not is_placeholder_plot(t)]
    return next((t for t in plots if not t.endswith(_CUT)), plots[0] if plots else None)


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
    titles = [n for n in nodes if _types(n) & TITLE_TYPES and _identity_rank(n, ids) < 2]
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
    """``primaryImage.url`` and ``plot.plotText.plainText`` of this title's nodes in Next.js data
    (those whose ``id`` is the page's ``tt`` id: the page also holds other titles' nodes)."""
    data = _load_json(raw) if raw else None
    nodes = [n for n in _walk(data) if n.get("id") in ids and ("primaryImage" in n or "plot" in n)]
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
class _Block:
    """An open element: its tag and what it marks (the poster slot, #overview-top, the rating)."""

    tag: str
    poster: bool = False
    overview: bool = False
    rating: bool = False


@dataclass
class _Slot:
    """A poster slot: its first image and the titles its links lead to."""

    image: str | None = None
    titles: set[str] = field(default_factory=set)


@dataclass
class _Capture:
    """The text of a plot element being read."""

    tag: str
    kind: str  # "summary" or "storyline"
    depth: int = 1
    parts: list[str] = field(default_factory=list)
    link: list[str] | None = None  # text of the <a> being read, dropped when it is a "more" link
    credit: int = 0  # depth inside an author credit (<em class="nobr">Written by ...</em>)
    nested: bool = False  # a plot element inside this one was read: this text repeats it


class _PageParser(HTMLParser):
    """One pass over the page: scripts, meta tags, the poster slot's image and plot elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.json_ld: list[str] = []
        self.next_data: str | None = None
        self.meta: dict[str, list[str]] = {}
        self.canonical: str | None = None
        self.poster_slots: list[_Slot] = []
        self.plots: dict[str, list[str]] = {"summary": [], "storyline": []}
        self._script: list[str] | None = None
        self._script_kind = ""
        self._raw: str | None = None  # inside <script>, <style>...: not page text
        self._slot: _Slot | None = None  # the poster slot being read
        self._blocks: list[_Block] = []
        self._captures: list[_Capture] = []
        self._heading: tuple[str, list[str]] | None = None
        self._next = ""  # "plot" after an <h5>Plot:</h5>, "storyline" after <h2>Storyline</h2>
        self._after_rating = False  # in #overview-top, just after the rating (2010-2011 plot)

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
            if "canonical" in rels and a.get("href"):
                self.canonical = a["href"]
        elif tag == "img" and self._slot is not None:
            self._img(a)
        elif tag == "a" and self._slot is not None:
            self._slot.titles.update(_TT_LINK.findall(a.get("href", "")))
        elif tag in ("h2", "h5"):
            self._heading = (tag, [])
        if self._captures or tag not in _VOID:
            self._capture_start(tag, a)
        if tag in ("script", "style", "noscript", "template"):
            self._raw = tag
        if tag not in _VOID:
            self._blocks.append(self._block(tag, a))

    def close(self) -> None:
        super().close()
        if self._slot is not None:  # the page ended inside the slot
            self.poster_slots.append(self._slot)
            self._slot = None

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
        elif self._heading is not None and tag == self._heading[0]:
            text = "".join(self._heading[1])
            self._next = ("plot" if tag == "h5" and _PLOT_HEADING.match(text) else
                          "storyline" if tag == "h2" and _STORYLINE_HEADING.match(text) else "")
            self._heading = None
        if self._captures:
            self._capture_end(tag)
        for i in range(len(self._blocks) - 1, -1, -1):  # tolerate unclosed children
            if self._blocks[i].tag == tag:
                self._close(self._blocks[i:])
                del self._blocks[i:]
                break

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)
            return
        if self._raw is not None:
            return
        if self._heading is not None:
            self._heading[1].append(data)
        if self._captures and not (cap := self._captures[-1]).credit:
            (cap.link if cap.link is not None else cap.parts).append(data)

    def _meta(self, a: dict[str, str]) -> None:
        if "content" not in a:
            return
        keys = {a.get("property", ""), a.get("name", "")} | (
            {"itemprop:" + a["itemprop"]} if a.get("itemprop") else set())
        for key in keys:
            if key.strip():
                self.meta.setdefault(key.strip().lower(), []).append(a["content"])

    def _block(self, tag: str, a: dict[str, str]) -> _Block:
        testid = a.get("data-testid", "")
        classes = a.get("class", "").split()
        poster = ("poster" in classes or a.get("id", "") in _POSTER_IDS
                  or a.get("name") == "poster" or ("hero" in testid and "poster" in testid))
        if poster and self._slot is None:
            self._slot = _Slot(titles=set(_TT_LINK.findall(a.get("href", ""))))
        else:
            poster = False  # nested marks belong to the slot already open
        return _Block(tag, poster=poster, overview=a.get("id") == "overview-top",
                      rating=any(c.startswith("star-box") for c in classes))

    def _close(self, closed: list[_Block]) -> None:
        if self._slot is not None and any(b.poster for b in closed):
            self.poster_slots.append(self._slot)
            self._slot = None
        if any(b.overview for b in closed):
            self._after_rating = False
        elif any(b.rating for b in closed) and any(b.overview for b in self._blocks):
            self._after_rating = True

    def _img(self, a: dict[str, str]) -> None:
        srcset = a.get("srcset", "").split(",")[0].split()
        for src in (a.get("src", ""), a.get("loadlate", ""), a.get("data-src", ""),
                    srcset[0] if srcset else ""):
            if src.strip() and not src.strip().lower().startswith("data:"):
                assert self._slot is not None
                if self._slot.image is None:  # the first image: later ones are overlays
                    self._slot.image = src
                return

    def _plot_kind(self, tag: str, a: dict[str, str]) -> str:
        """``summary``, ``storyline`` or "" for an element that is not a plot."""
        classes = a.get("class", "").split()
        testid = a.get("data-testid", "")
        if "canwrap" in classes or _STORYLINE_TESTID.match(testid) or (
                self._next == "storyline" and tag in ("p", "div")):
            return "storyline"
        if (a.get("itemprop", "").lower() == "description" or _PLOT_TESTID.match(testid)
                or "summary_text" in classes or (self._next == "plot" and "info-content" in classes)
                or (self._after_rating and tag == "p")):
            return "summary"
        return ""

    def _capture_start(self, tag: str, a: dict[str, str]) -> None:
        cap = self._captures[-1] if self._captures else None
        if cap is not None and cap.credit:
            cap.credit += tag not in _VOID
            return
        if self._after_rating and (tag == "h4" or "txt-block" in a.get("class", "").split()):
            self._after_rating = False  # the credits: this layout shows no plot
        kind = "" if tag in _VOID else self._plot_kind(tag, a)
        if kind:
            if cap is not None:
                cap.nested = True  # e.g. the plot-xs_to_m / plot-l / plot-xl copies of 2020+
            self._captures.append(_Capture(tag, kind))
            self._next, self._after_rating = "", False
        elif cap is None:
            return
        elif tag == "em" and "nobr" in a.get("class", "").split():
            cap.credit = 1
        elif tag == cap.tag:
            cap.depth += 1
        elif tag == "a":
            cap.link = []
        elif tag in ("br", "p", "div", "li"):
            cap.parts.append(" ")

    def _capture_end(self, tag: str) -> None:
        cap = self._captures[-1]
        if cap.credit:
            cap.credit -= 1
        elif tag == "a" and cap.link is not None:
            text = "".join(cap.link)
            if not _LINK_PHRASE.match(text):
                cap.parts.append(text)
            cap.link = None
        elif tag == cap.tag:
            cap.depth -= 1
            if cap.depth == 0:
                self._captures.pop()
                text = _WRITTEN_BY.sub("", " ".join("".join(cap.parts).split()))
                text = text.rstrip(" |»›\u00a0")
                if text and not cap.nested:
                    self.plots[cap.kind].append(text)
