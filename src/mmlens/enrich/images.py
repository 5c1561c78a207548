"""Poster validation and normalisation: decode fully with PIL, then re-encode as RGB JPEG."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 40_000_000
JPEG_QUALITY = 90
# content types that may carry an image (servers and CDNs often send octet-stream)
_IMAGE_LIKE = ("image/", "application/octet-stream", "binary/octet-stream")


class InvalidImage(ValueError):
    """The bytes are not a complete, decodable image within the limits."""


def check_image_content_type(content_type: str | None) -> None:
    """Raise InvalidImage when a response's content type says it is not an image (e.g. HTML)."""
    if not content_type:
        return
    kind = content_type.split(";", 1)[0].strip().lower()
    if not kind.startswith(_IMAGE_LIKE):
        raise InvalidImage(f"expected an image, got content type {kind!r}")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, verify and fully load ``data``; truncated or non-image bytes raise InvalidImage."""
    if not data:
        raise InvalidImage("empty body")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise InvalidImage(f"{width}x{height} pixels exceeds the cap of {max_pixels}")
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage(f"not an image ({_sniff(data)})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"cannot decode image: {exc}") from None
    if width <= 0 or height <= 0:
        raise InvalidImage("image has no pixels")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of ``image``; transparent areas become white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def normalize_image(data: bytes, max_pixels: int = MAX_PIXELS,
                    quality: int = JPEG_QUALITY) -> bytes:
    """Validated ``data`` re-encoded as an RGB JPEG (first frame of animations)."""
    image = decode_image(data, max_pixels=max_pixels)
    out = io.BytesIO()
    to_rgb(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "looks like an HTML page"
    if head.startswith((b"{", b"[")):
        return "looks like JSON"
    return f"{len(data)} bytes of unknown format"
