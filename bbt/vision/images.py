"""Decode untrusted image bytes into BGR uint8 arrays, safely and the same way everywhere."""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bbt import MAX_PIXELS
from bbt.errors import BbtError

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")
# The same list as people read it: every error message and the page's upload hint say this.
SUPPORTED_FOR_PEOPLE = "JPEG, PNG, GIF, WebP, BMP or TIFF"
DEFAULT_MAX_PIXELS = MAX_PIXELS
# A progressive JPEG is decoded scan by scan; cameras and encoders write about 10. A file that repeats a scan
# thousands of times costs a minute of CPU in a few hundred KB: refuse it before decoding.
MAX_JPEG_SCANS = 100
# In entropy-coded data a 0xFF byte is followed by 0x00 (stuffing) or a restart marker; anything else is a marker.
NEXT_MARKER = re.compile(rb"\xff(?![\x00\xd0-\xd7\xff])")
# Between segments libjpeg skips stray bytes and 0xFF fill bytes up to the next marker code: a byte that is neither
# 0x00 nor 0xFF after a 0xFF. (A look-behind, not `\xff+(.)`, so a run of fill bytes is scanned once.)
MARKER_CODE = re.compile(rb"(?<=\xff)[^\x00\xff]")

# The most memory decoding takes per decoded pixel, in any mode (benchmarks/memory.py measures it): Pillow's
# 4-byte pixels (twice while a mode is converted), the 3-byte array and the BGR copy.
PEAK_BYTES_PER_PIXEL = {"WEBP": 19}  # libwebp decodes into a buffer of its own first
DEFAULT_PEAK_BYTES_PER_PIXEL = 14
# Rows narrowed at a time when a wide (16/32-bit, float) image becomes 8-bit.
BAND_ROWS = 256

# We enforce our own pixel limit before decoding; Pillow's bomb check is a second line of defence.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


class ImageError(BbtError, ValueError):
    """The bytes are not an image this system can use; the message says why and what to do."""


# EXIF orientations that turn the stored image by 90 degrees (its width becomes the upright height).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


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
    declared = webp_size(data)  # Pillow allocates a WebP's whole canvas when it opens the file: check it first
    if declared is not None and declared[0] * declared[1] > max_pixels:
        raise ImageError(f"{name} is {declared[0]}x{declared[1]} ({declared[0] * declared[1] / 1e6:.1f} megapixels), "
                         f"over the {max_pixels / 1e6:.0f} megapixel limit: resize it before uploading")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not a recognised image: send a {SUPPORTED_FOR_PEOPLE} photo"
        ) from None
    except MemoryError:
        raise  # a memory cap (bbt.serving.sandbox), not a bad file
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name} is larger than {max_pixels / 1e6:.0f} megapixels: resize it before uploading"
        ) from None
    except Exception as err:  # Pillow raises many types for malformed headers
        raise ImageError(f"{name} could not be read as an image ({err}): the file may be corrupt") from None

    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise ImageError(
                f"{name} is in {image.format} format, which is not supported: "
                f"convert it to JPEG or PNG (supported: {SUPPORTED_FOR_PEOPLE})"
            )
        width, height = image.size
        if image.format in ("JPEG", "MPO") and jpeg_scans(data) > MAX_JPEG_SCANS:
            raise ImageError(f"{name} is a JPEG of more than {MAX_JPEG_SCANS} scans (photos have about 10): "
                             "re-save it as an ordinary JPEG")
        if width < 1 or height < 1:
            raise ImageError(f"{name} has no pixels ({width}x{height})")
        if image.format in ("JPEG", "MPO") and jpeg_too_short(data, width, height) \
                and not jpeg_arithmetic(data):
            raise ImageError(f"{name} declares {width}x{height} pixels but its {len(data)} bytes cannot hold "
                             "them: the file is truncated or forged; re-export or re-download it")
        if width * height > max_pixels:
            raise ImageError(
                f"{name} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the "
                f"{max_pixels / 1e6:.0f} megapixel limit: resize it before uploading"
            )
        try:
            image.seek(0)  # first frame of an animation
            _reduce_jpeg(image, min_side)
            image.load()
            # Read after loading: Pillow turns a TIFF upright as it loads it (its size was upright from the start).
            orientation = exif_orientation(image)
            size = (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
            if orientation != 1:
                image.info.pop("exif", None)  # else exif_transpose re-writes the block, which may fail to write
                ImageOps.exif_transpose(image, in_place=True)  # in place: a copy would double the photo's memory
            return Photo(_to_bgr(image), (int(size[0]), int(size[1])))
        except (ImageError, MemoryError):
            raise
        except Exception as err:
            raise ImageError(
                f"{name} is a damaged or truncated {image.format} file ({err}): re-export or re-download it"
            ) from None


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation, 1 (as stored) when it has none, an invalid one or an unreadable EXIF block:
    its pixels are fine, and viewers show it as stored."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - Pillow raises many types for a corrupt block
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def decode_cost(data: bytes, min_side: int = 0) -> int:
    """The most memory (bytes) decode_photo can take for `data`, from its header alone; 0 when the header
    cannot be read (decoding then fails before allocating anything)."""
    declared = webp_size(data)
    if declared is not None:  # read here: Pillow's open would allocate the canvas
        return declared[0] * declared[1] * peak_bytes_per_pixel("WEBP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                _reduce_jpeg(image, min_side)
                width, height = image.size
                per_pixel = peak_bytes_per_pixel(image.format)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - any header Pillow cannot read is refused by decode_photo at once
        return 0
    return width * height * per_pixel


def webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file declares, read from its first chunk (VP8X, VP8 or VP8L); None for other bytes."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # 24-bit canvas width - 1 and height - 1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":  # after the frame tag and start code: 14-bit width and height
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L":  # after the signature byte: 14-bit width - 1, 14-bit height - 1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def peak_bytes_per_pixel(image_format: str | None = None) -> int:
    """The most bytes decoding takes per decoded pixel of a format (None: of any format)."""
    if image_format is None:
        return max(DEFAULT_PEAK_BYTES_PER_PIXEL, *PEAK_BYTES_PER_PIXEL.values())
    return PEAK_BYTES_PER_PIXEL.get(image_format, DEFAULT_PEAK_BYTES_PER_PIXEL)


def _reduce_jpeg(image: Image.Image, min_side: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while its longer side stays at least `min_side` (0: full)."""
    width, height = image.size
    if min_side and image.format in ("JPEG", "MPO") and max(width, height) > min_side:
        factor = min_side / max(width, height)
        # draft picks the smallest scale that keeps at least the requested size.
        image.draft(image.mode, (math.ceil(width * factor), math.ceil(height * factor)))


def jpeg_too_short(data: bytes, width: int, height: int) -> bool:
    """Whether a Huffman-coded JPEG is too short for the size its header declares: every 8x8 luminance block
    takes at least one bit (its DC code), so a few hundred bytes cannot hold a 6000x6000 photo."""
    return len(data) * 8 < math.ceil(width / 8) * math.ceil(height / 8)


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The scans of a JPEG's first image, counted by walking its markers (segment payloads such as an EXIF
    thumbnail, and bytes after the end of the image, are not counted); stops counting past `stop_after`."""
    scans = 0
    for marker in _jpeg_markers(data):
        scans += marker == 0xDA
        if scans > stop_after:
            break
    return scans


def jpeg_arithmetic(data: bytes) -> bool:
    """Whether a JPEG's frame is arithmetic-coded (SOF9-SOF15), which can take less than a bit per block."""
    for marker in _jpeg_markers(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return marker >= 0xC9
    return False


def _jpeg_markers(data: bytes) -> Iterator[int]:
    """The markers of a JPEG's first image, in order, up to its end (EOI), walked as libjpeg reads them: stray
    bytes and fill bytes between segments are skipped, so they hide no scan from the count."""
    i, end = 2, len(data)
    while True:
        found = MARKER_CODE.search(data, i)
        if found is None:
            return
        marker, i = data[found.start()], found.end()
        if marker == 0xD9:  # end of image
            return
        yield marker
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            continue
        if i + 2 > end:
            return
        i += int.from_bytes(data[i:i + 2], "big")
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next marker
            found = NEXT_MARKER.search(data, i)
            if found is None:
                return
            i = found.start()


def _to_bgr(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to 8-bit BGR, dropping alpha like OpenCV's IMREAD_COLOR does.

    Wide modes are narrowed band by band, so a 40-megapixel photo never has a full-size wide temporary.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _gray_to_bgr(np.asarray(image, dtype=np.uint16), lambda band: band >> 8)
    if image.mode == "I":
        # 32-bit integers carry no bit depth of their own: 8-bit, 16-bit (some PNG and TIFF readers) or wider
        # data. Shift by what the largest value needs, so none of them comes out black or white.
        wide = np.asarray(image)
        bits = max(int(wide.max(initial=0)), 0).bit_length()
        # A 16-bit image keeps its brightness, however dark its brightest pixel.
        shift = 0 if bits <= 8 else 8 if bits <= 16 else bits - 8
        return _gray_to_bgr(wide, lambda band: band.clip(0, None) >> shift)
    if image.mode == "F":
        return _gray_to_bgr(np.asarray(image), lambda band: band)
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _gray_to_bgr(values: np.ndarray, narrow: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Gray values of any type, narrowed to 0..255 by `narrow` a band of rows at a time, as 3-channel BGR."""
    gray = np.empty(values.shape, np.uint8)
    for start in range(0, values.shape[0], BAND_ROWS):
        gray[start:start + BAND_ROWS] = narrow(values[start:start + BAND_ROWS]).clip(0, 255)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
