"""Poster images of the sample world: a visual style per movie that a CNN can see.

Each style is a colour palette (a hue family and a brightness) plus a pattern (stripes, rings,
checker, gradient, blobs, ...). A movie's poster draws its style with per-movie jitter (hue, scale,
phase, noise) and its title in PIL's small default font, so style is plain in the pixels yet no two
posters are identical.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 180, 270

# (hue in degrees, brightness, pattern) per style; hues and brightness differ between styles.
STYLES: tuple[tuple[float, float, str], ...] = (
    (0.0, 0.85, "horizontal_stripes"),
    (45.0, 0.35, "rings"),
    (90.0, 0.80, "checker"),
    (140.0, 0.40, "diagonal_gradient"),
    (190.0, 0.90, "blobs"),
    (230.0, 0.30, "vertical_stripes"),
    (280.0, 0.75, "sunburst"),
    (320.0, 0.45, "dots"),
)
N_STYLES = len(STYLES)

_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
_YY /= HEIGHT
_XX /= WIDTH


def _pattern(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A [HEIGHT, WIDTH] float pattern in [0, 1]."""
    freq = rng.uniform(4.0, 7.0)
    phase = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    if kind == "horizontal_stripes":
        p = np.sin(2 * np.pi * freq * _YY + phase) > 0
    elif kind == "vertical_stripes":
        p = np.sin(2 * np.pi * freq * _XX + phase) > 0
    elif kind == "rings":
        r = np.hypot(_XX - cx, (_YY - cy) * HEIGHT / WIDTH)
        p = np.sin(2 * np.pi * freq * 1.5 * r + phase) > 0
    elif kind == "checker":
        n = int(round(freq))
        p = (np.floor(_XX * n) + np.floor(_YY * n * 1.5)) % 2 == 0
    elif kind == "diagonal_gradient":
        angle = rng.uniform(0.6, 1.0)
        p = (np.cos(angle) * _XX + np.sin(angle) * _YY) / (np.cos(angle) + np.sin(angle))
    elif kind == "blobs":
        p = np.zeros_like(_XX)
        for _ in range(5):
            bx, by, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.2)
            p += np.exp(-((_XX - bx) ** 2 + (_YY - by) ** 2) / (2 * s * s))
        p = np.clip(p, 0, 1)
    elif kind == "sunburst":
        theta = np.arctan2(_YY - cy, _XX - cx)
        p = np.sin(theta * round(freq * 2) + phase) > 0
    elif kind == "dots":
        n = freq * 1.2
        d = np.hypot((_XX * n) % 1 - 0.5, (_YY * n * 1.5) % 1 - 0.5)
        p = d < 0.3
    else:  # pragma: no cover - STYLES lists every kind
        raise ValueError(f"unknown pattern {kind!r}")
    return np.asarray(p, dtype=np.float32)


def _palette(style: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours (0..255) of the style's hue family, with per-movie jitter."""
    hue, value, _ = STYLES[style]
    h = ((hue + rng.uniform(-12, 12)) % 360) / 360
    v = float(np.clip(value + rng.uniform(-0.07, 0.07), 0.1, 1.0))
    light = colorsys.hsv_to_rgb(h, rng.uniform(0.25, 0.45), min(1.0, v + 0.15))
    deep = colorsys.hsv_to_rgb(h, rng.uniform(0.8, 1.0), v * 0.6)
    return np.array(light) * 255, np.array(deep) * 255


def render_poster(style: int, title: str, rng: np.random.Generator) -> Image.Image:
    """A WIDTH x HEIGHT RGB poster of ``style`` with ``title`` written near the bottom."""
    if not 0 <= style < N_STYLES:
        raise ValueError(f"style must be in 0..{N_STYLES - 1}, got {style}")
    _, _, kind = STYLES[style]
    light, deep = _palette(style, rng)
    p = _pattern(kind, rng)[..., None]
    img = light * p + deep * (1 - p)
    img += rng.normal(0, 6, size=img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    y = HEIGHT - 40
    draw.rectangle((0, y - 4, WIDTH, y + 18), fill=(20, 20, 20))
    draw.text((6, y), title[:28], fill=(245, 245, 245), font=font)
    return pil


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    """JPEG encoding of ``img`` (deterministic for the same pixels)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def padded_jpeg(jpeg: bytes, total_bytes: int) -> bytes:
    """A valid JPEG of about ``total_bytes``: ``jpeg`` with comment segments after its SOI."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    chunk = 65533
    segment = b"\xff\xfe" + (chunk + 2).to_bytes(2, "big") + b"\x00" * chunk
    n = max(0, -(-(total_bytes - len(jpeg)) // len(segment)))
    return jpeg[:2] + segment * n + jpeg[2:]
