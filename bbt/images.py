"""Decode untrusted image bytes into BGR uint8 arrays, safely and the same way everywhere."""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bbt.errors import BbtError

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")
# The same list as people read it: every error message and the page's upload hint say this.
SUPPORTED_FOR_PEOPLE = "JPEG, PNG, GIF, WebP, BMP or TIFF"
DEFAULT_MAX_PIXELS = 40_000_000
# A progressive JPEG is decoded scan by scan; cameras and encoders write about 10. A file that repeats a scan
# thousands of times costs a minute of CPU in a few hundred KB: refuse it before decoding.
MAX_JPEG_SCANS = 100
# In entropy-coded data a 0xFF byte is followed by 0x00 (stuffing) or a restart marker; anything else is a marker.
NEXT_MARKER = re.compile(rb"\xff(?![\x00\xd0-\xd7\xff])")

# We enforce our own pixel limit before decoding; Pillow's bomb check is a second line of defence.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


class ImageError(BbtError, ValueError):
    """The bytes are not an image this system can use; the message says why and what to do."""


# EXIF orientations that turn the stored image by 90 degrees (its width becomes the upright height).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class Photo:
    """A decoded photo: its pixels, possibly reduced by JPEG DCT scaling, and the photo's own upright size."""

    image: np.ndarray  # upright BGR uint8, (h, w, 3)
    size: tuple[int, int]  # the photo's (width, height) before any reduction, after EXIF rotation

    @property
    def scale(self) -> tuple[float, float]:
        """Decoded pixels per photo pixel, (x, y); (1, 1) when decoded at full size."""
        return self.image.shape[1] / self.size[0], self.image.shape[0] / self.size[1]


def decode_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an upright BGR uint8 array of shape (h, w, 3), at full size."""
    return decode_photo(data, name, max_pixels).image


def decode_photo(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = 0) -> Photo:
    """Decode image bytes to an upright BGR photo, a JPEG reduced in the DCT domain while its longer side stays
    at least `min_side` (0: full size). Reducing there skips most of the decoding work and memory.

    Handles JPEG/JFIF, PNG, GIF (first frame), WebP, BMP and TIFF; grayscale, palette, alpha, CMYK and
    16-bit images; and EXIF orientation. Dimensions are checked before any pixel is decoded.
    """
    if not data:
        raise ImageError(f"{name} is empty: send the bytes of a {SUPPORTED_FOR_PEOPLE} photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not a recognised image: send a {SUPPORTED_FOR_PEOPLE} photo"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name} is larger than {max_pixels / 1e6:.0f} megapixels: resize it before uploading"
        ) from None
    except Exception as err:  # Pillow raises many types for malformed headers
        raise ImageError(f"{name} could not be read as an image ({err}): the file may be corrupt") from None

    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise ImageError(
                f"{name} is a {image.format} image, which is not supported: "
                f"convert it to JPEG or PNG (supported: {SUPPORTED_FOR_PEOPLE})"
            )
        width, height = image.size
        if image.format in ("JPEG", "MPO") and jpeg_scans(data) > MAX_JPEG_SCANS:
            raise ImageError(f"{name} is a JPEG of more than {MAX_JPEG_SCANS} scans (photos have about 10): "
                             "re-save it as an ordinary JPEG")
        if width < 1 or height < 1:
            raise ImageError(f"{name} has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageError(
                f"{name} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the "
                f"{max_pixels / 1e6:.0f} megapixel limit: resize it before uploading"
            )
        try:
            image.seek(0)  # first frame of an animation
            size = (height, width) if image.getexif().get(0x0112) in TRANSPOSING_ORIENTATIONS else (width, height)
            if min_side and image.format in ("JPEG", "MPO") and max(width, height) > min_side:
                factor = min_side / max(width, height)
                # draft picks the smallest 1/2, 1/4 or 1/8 scale that keeps at least the requested size.
                image.draft(image.mode, (math.ceil(width * factor), math.ceil(height * factor)))
            image.load()
            upright = ImageOps.exif_transpose(image)
            return Photo(_to_bgr(upright), (int(size[0]), int(size[1])))
        except ImageError:
            raise
        except Exception as err:
            raise ImageError(
                f"{name} is a damaged or truncated {image.format} file ({err}): re-export or re-download it"
            ) from None


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The scans of a JPEG's first image, counted by walking its markers (segment payloads such as an EXIF
    thumbnail, and bytes after the end of the image, are not counted); stops counting past `stop_after`."""
    scans, i, end = 0, 2, len(data)
    while i + 4 <= end and scans <= stop_after:
        if data[i] != 0xFF:
            break  # not a marker where one must be: the decoder will say what is wrong
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next marker
            scans += 1
            found = NEXT_MARKER.search(data, i)
            if found is None:
                break
            i = found.start()
    return scans


def _to_bgr(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to 8-bit BGR, dropping alpha like OpenCV's IMREAD_COLOR does."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode == "I":
        # 32-bit integers carry no bit depth of their own: 8-bit, 16-bit (some PNG and TIFF readers) or wider
        # data. Shift by what the largest value needs, so none of them comes out black or white.
        wide = np.asarray(image, dtype=np.int64).clip(0, None)
        bits = int(wide.max(initial=0)).bit_length()
        # A 16-bit image keeps its brightness, however dark its brightest pixel.
        shift = 0 if bits <= 8 else 8 if bits <= 16 else bits - 8
        gray = (wide >> shift).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode == "F":
        gray = np.asarray(image, dtype=np.float32).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
