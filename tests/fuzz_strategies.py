"""Hostile requests for the served model, as hypothesis strategies, and the contract every answer must keep.

Shared by tests/test_fuzz.py (about 2,000 cases against the suite's server) and benchmarks/fuzz.py (as many as
asked). Each strategy draws a `Case`: a request and what a correct service answers to it. `problems` checks an
answer: 200 with the contract's JSON, or a 4xx `{"error": ...}`; never a 5xx (a 503 busy with Retry-After
excepted).
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from hypothesis import strategies as st
from PIL import Image

from bbt.vision.images import SUPPORTED_FORMATS

Size = tuple[int, int]
Expect = Literal["ok", "refused", "any"]

MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "I;16", "I;16B", "F")
# Formats Pillow writes; the ones outside bbt.vision.images.SUPPORTED_FORMATS must be refused by name.
WRITABLE = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "MPO", "ICO", "AVIF", "BLP", "DDS", "DIB", "ICNS", "IM",
            "JPEG2000", "MSP", "PCX", "PPM", "QOI", "SGI", "SPIDER", "TGA", "XBM", "EPS", "PDF", "PALM")
TIFF_COMPRESSIONS = (None, "tiff_lzw", "tiff_deflate", "tiff_adobe_deflate", "packbits")
TIFF_BILEVEL = ("group3", "group4", "tiff_ccitt")  # fax compressions, for mode 1 only
# Widest side each format can hold.
MAX_SIDE = {"JPEG": 65_500, "MPO": 65_500, "WEBP": 16_383, "GIF": 65_535, "PNG": 2**31 - 1, "TIFF": 2**31 - 1,
            "BMP": 2**31 - 1}
EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Limits:
    """What the service admits (params.yaml serve): larger uploads and images must be refused."""

    max_pixels: int = 40_000_000
    max_bytes: int = 10 * 1024 * 1024


@dataclass
class Case:
    """One request and the answer it is owed: `expect` ok (200), refused (4xx) or any (either, never 5xx)."""

    family: str
    what: str
    path: str = "/classify"
    expect: Expect = "any"
    sizes: frozenset[Size] = frozenset()  # the upright (width, height) a 200 may report; empty: not known
    files: list[tuple[str, tuple[str | None, bytes, str]]] | None = None
    form: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    chunked: bool = False  # the body streamed without a Content-Length

    def __repr__(self) -> str:  # hypothesis prints a failing case: its description, not megabytes of bytes
        return f"Case({self.family}: {self.what}; {self.method} {self.path}, expect {self.expect})"

    @property
    def payload(self) -> bytes:
        """The bytes that make this case: the uploaded file, the form field or the raw body."""
        if self.files:
            return self.files[0][1][1]
        if self.form:
            return next(iter(self.form.values())).encode()
        return self.content or b""

    def send(self, client: httpx.Client) -> httpx.Response:
        content = iter([self.content]) if self.chunked and self.content is not None else self.content
        return client.request(self.method, self.path, files=self.files, data=self.form, content=content,
                              headers=self.headers or None)


def upload(family: str, what: str, data: bytes, limits: Limits, filename: str = "upload",
           expect: Expect = "any", sizes: frozenset[Size] = frozenset()) -> Case:
    """A POST /classify of `data` as the file field 'image'; anything over the upload limit must be refused."""
    if len(data) > limits.max_bytes:
        expect = "refused"
    return Case(family, f"{what}, {len(data)} bytes", expect=expect, sizes=sizes,
                files=[("image", (filename, data, "application/octet-stream"))])


# ---- the contract ------------------------------------------------------------------------------------------

def problems(case: Case, response: httpx.Response) -> list[str]:
    """What is wrong with the answer to `case`; empty when it keeps the contract."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        return [f"{status} is not JSON: {response.text[:300]!r}"]
    if status == 200:
        found = check_answer(case, body)
        if case.expect == "refused":
            found.append("answered 200 where a 4xx is owed")
        return found
    if 400 <= status < 500 or (status == 503 and "retry-after" in response.headers):
        if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)
                and body["error"].strip()):
            return [f"{status} without a JSON {{'error': ...}}: {body!r:.300}"]
        if status < 500 and case.expect == "ok":
            return [f"refused a usable image with {status}: {body['error']}"]
        return []
    return [f"{status}: {body!r:.300}"]


def check_answer(case: Case, body: Any) -> list[str]:
    """The 200 answer's shape: /classify's faces inside the image, or the legacy route's list of faces."""
    if case.path == "/classify_image":
        ok = isinstance(body, list) and all(
            isinstance(f, dict) and isinstance(f.get("class"), str) and len(f.get("class_probability", ())) == 4
            for f in body)
        return [] if ok else [f"not the legacy answer: {body!r:.300}"]
    if not (isinstance(body, dict) and isinstance(body.get("faces"), list)
            and isinstance(body.get("image"), dict)):
        return [f"not a classification: {body!r:.300}"]
    width, height = body["image"].get("width"), body["image"].get("height")
    if not (isinstance(width, int) and isinstance(height, int)):
        return [f"no image size: {body['image']!r:.100}"]
    found = []
    if case.sizes and (width, height) not in case.sizes:
        found.append(f"image size {width}x{height}, expected one of {sorted(case.sizes)}")
    for face in body["faces"]:
        box = face.get("box", {})
        x, y, w, h = (box.get(k) for k in "xywh")
        if not all(isinstance(v, int) for v in (x, y, w, h)) or not (
                0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height):
            found.append(f"box {box} not inside the {width}x{height} image")
        if not isinstance(face.get("label"), str) or not isinstance(face.get("confidence"), float):
            found.append(f"face without label or confidence: {face!r:.200}")
    return found


def error_class(message: str) -> str:
    """An error message with its particulars (names, numbers, details in brackets) blanked, for counting."""
    message = re.sub(r"[\x00-\x1f]", "?", message)
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    message = re.sub(r"\([^()]*\)", "(…)", message)
    return re.sub(r"\d+(\.\d+)?", "N", message)


# ---- images ------------------------------------------------------------------------------------------------

def encode(image: Image.Image | list[Image.Image], fmt: str, **options: Any) -> bytes:
    """Encode an image (a list: an animation or pages, first image first) with Pillow."""
    frames = image if isinstance(image, list) else [image]
    if len(frames) > 1:
        options = {**options, "save_all": True, "append_images": frames[1:]}
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames[0].save(out, fmt, **options)
    return out.getvalue()


@functools.cache
def savable_modes(fmt: str) -> tuple[str, ...]:
    """The modes of MODES that Pillow can save as `fmt` (it converts some on the way)."""
    modes = []
    for mode in MODES:
        try:
            encode(in_mode(Image.new("RGB", (9, 7), (40, 90, 200)), mode), fmt)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        modes.append(mode)
    return tuple(modes)


def in_mode(rgb: Image.Image, mode: str) -> Image.Image:
    """An RGB image in another Pillow mode; wide modes keep the full 16-bit range."""
    if mode in ("I;16", "I;16B"):
        wide = np.asarray(rgb.convert("L"), np.uint16) * 257
        return Image.frombytes(mode, rgb.size, wide.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    if mode == "PA":
        return rgb.convert("RGBA").convert("PA")
    return rgb.convert(mode)


@functools.lru_cache(maxsize=64)
def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def content(kind: str, size: Size, seed: int, photos: Sequence[bytes]) -> Image.Image:
    """RGB pixels: a flat colour, noise, or a dataset photo resized (its faces exercise the whole model)."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    if kind == "photo" and photos:
        return decoded(photos[seed % len(photos)]).resize(size)
    return Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))


def wide_content(mode: str, size: Size, seed: int) -> Image.Image:
    """Integer and float images with values no 8-bit image holds: negative, huge, NaN and infinity."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0])
    if mode == "F":
        values = rng.choice(np.array([0, 1, 255, 256, -1, 1e30, -1e30, np.nan, np.inf, -np.inf], np.float32),
                            shape)
        return Image.frombytes("F", size, values.astype("<f4").tobytes())
    values = rng.choice(np.array([0, 1, 255, 256, 65535, 65536, -1, 2**31 - 1, -(2**31)], np.int64), shape)
    return Image.frombytes("I", size, values.astype("<i4").tobytes())


def small_sizes(largest: int = 700) -> st.SearchStrategy[Size]:
    """Tiny, thin and ordinary sizes a model may be handed: 1x1, 1xN, Nx1 and up to `largest` a side."""
    side = st.integers(1, largest)
    return st.one_of(st.tuples(st.integers(1, 16), st.integers(1, 16)),
                     st.tuples(st.integers(1, 3), side), st.tuples(side, st.integers(1, 3)),
                     st.tuples(side, side))


def format_options(draw: st.DrawFn, fmt: str, mode: str) -> dict[str, Any]:
    """Encoder options worth varying: progressive JPEGs, TIFF compressions, lossless WebP, transparency, ..."""
    if fmt in ("JPEG", "MPO"):
        options: dict[str, Any] = {"quality": draw(st.integers(1, 100)), "progressive": draw(st.booleans()),
                                   "optimize": draw(st.booleans())}
        if mode in ("RGB", "YCbCr"):
            options["subsampling"] = draw(st.sampled_from([0, 1, 2]))
        if draw(st.booleans()):
            options["restart_marker_blocks"] = draw(st.integers(1, 64))
        return options
    if fmt == "PNG":
        options = {"compress_level": draw(st.integers(0, 9))}
        if mode == "P" and draw(st.booleans()):
            options["transparency"] = draw(st.integers(0, 255))
        if mode == "L" and draw(st.booleans()):
            options["transparency"] = draw(st.integers(0, 255))
        if mode == "RGB" and draw(st.booleans()):
            options["transparency"] = tuple(draw(st.lists(st.integers(0, 255), min_size=3, max_size=3)))
        return options
    if fmt == "GIF":
        options = {"interlace": draw(st.booleans()), "optimize": draw(st.booleans())}
        if draw(st.booleans()):
            options["transparency"] = draw(st.integers(0, 255))
        return options
    if fmt == "TIFF":
        compression = draw(st.sampled_from(TIFF_COMPRESSIONS + TIFF_BILEVEL if mode == "1" else
                                           TIFF_COMPRESSIONS + ("jpeg",) if mode in ("L", "RGB", "YCbCr") else
                                           TIFF_COMPRESSIONS))
        return {"compression": compression} if compression else {}
    if fmt == "WEBP":
        return {"lossless": draw(st.booleans()), "quality": draw(st.integers(0, 100)),
                "method": draw(st.integers(0, 6))}
    return {}


@st.composite
def images(draw: st.DrawFn, limits: Limits, photos: Sequence[bytes] = ()) -> Case:
    """A valid image of every supported format and the modes it holds, animated or multi-page at times: it must
    classify, at its own size."""
    fmt = draw(st.sampled_from(SUPPORTED_FORMATS))
    mode = draw(st.sampled_from(savable_modes("JPEG" if fmt == "MPO" else fmt)))
    width, height = draw(small_sizes())
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["flat", "noise", "photo"]))
    if mode in ("I", "F") and draw(st.booleans()):
        first = wide_content(mode, (width, height), seed)
        kind = "wide"
    else:
        first = in_mode(content(kind, (width, height), seed, photos), mode)
    options = format_options(draw, fmt, mode)
    frames = [first]
    if fmt in ("GIF", "PNG", "WEBP", "TIFF", "MPO") and draw(st.integers(0, 3)) == 0:
        # More frames (pages): TIFF pages may differ in size; the first one is the photo.
        for i in range(draw(st.integers(1, 3))):
            size = draw(small_sizes(300)) if fmt == "TIFF" else (width, height)
            frames.append(in_mode(content("noise", size, seed + i + 1, photos), first.mode))
    try:
        data = encode(frames, fmt, **options)
    except OSError:  # libjpeg cannot always optimise its tables in one pass ("Suspension not allowed here")
        data = encode(frames, fmt)
    what = f"{fmt} {mode} {width}x{height} {kind} {options} frames={len(frames)}"
    expect: Expect = "refused" if width * height > limits.max_pixels else "ok"
    return upload("image", what, data, limits, f"fuzz.{fmt.lower()}", expect, frozenset({(width, height)}))


@st.composite
def large_images(draw: st.DrawFn, limits: Limits) -> Case:
    """Flat images (cheap to encode) near and over the pixel limit, and extreme aspect ratios up to it."""
    fmt = draw(st.sampled_from(["PNG", "GIF", "TIFF", "JPEG", "WEBP"]))
    longest = min(MAX_SIDE[fmt], limits.max_pixels * 11 // 10)
    near = st.integers(2_000, min(longest, 20_000)).flatmap(
        lambda w: st.tuples(st.just(w), st.integers(limits.max_pixels // w - 40, limits.max_pixels // w + 40)))
    extreme = st.integers(1, 40).flatmap(lambda short: st.tuples(
        st.just(short), st.integers(1_000, max(1_000, min(longest, limits.max_pixels * 11 // 10 // short)))))
    width, height = draw(st.one_of(near, extreme))
    if draw(st.booleans()):
        width, height = height, width
    if max(width, height) > MAX_SIDE[fmt]:
        fmt = "PNG"
    mode = {"JPEG": "L", "WEBP": "RGB"}.get(fmt, draw(st.sampled_from(["1", "L", "P"])))
    colour = draw(st.integers(0, 255))
    options = {"TIFF": {"compression": "tiff_deflate"}, "PNG": {"compress_level": 1},
               "WEBP": {"lossless": True, "method": 0, "quality": 0}}.get(fmt, {})
    data = encode(Image.new(mode, (width, height), colour), fmt, **options)
    expect: Expect = "refused" if width * height > limits.max_pixels else "ok"
    return upload("large", f"{fmt} {mode} {width}x{height} flat", data, limits, f"large.{fmt.lower()}", expect,
                  frozenset({(width, height)}))


# ---- EXIF --------------------------------------------------------------------------------------------------

def tiff_block(entries: Sequence[tuple[int, int, int, bytes]], order: bytes = b"II",
               next_ifd: int = 0, ifd_offset: int = 8) -> bytes:
    """A TIFF structure with one IFD of (tag, type, count, 4-byte value) entries, as EXIF holds it."""
    end = "<" if order == b"II" else ">"
    ifd = struct.pack(end + "H", len(entries)) + b"".join(
        struct.pack(end + "HHI", tag, kind, count) + value.ljust(4, b"\0")[:4]
        for tag, kind, count, value in entries)
    return order + struct.pack(end + "HI", 42, ifd_offset) + ifd + struct.pack(end + "I", next_ifd)


@st.composite
def exif_blocks(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """An EXIF block (with its "Exif\\0\\0" header) and the orientation a reader should apply (None: unsure).

    Orientation 1-8 as a SHORT, invalid values (0, 9, 65535), the wrong type, count or offsets, IFD loops,
    a wrong byte order, truncation and plain garbage."""
    order = draw(st.sampled_from([b"II", b"MM"]))
    end = "<" if order == b"II" else ">"
    value = draw(st.one_of(st.integers(1, 8), st.sampled_from([0, 9, 255, 65535])))
    kind = draw(st.sampled_from(["valid", "type", "count", "offset", "loop", "order", "truncated", "garbage"]))
    short = struct.pack(end + "H", value)
    if kind == "valid":
        return b"Exif\0\0" + tiff_block([(EXIF_ORIENTATION, 3, 1, short)], order), value
    if kind == "type":
        entry = (EXIF_ORIENTATION, draw(st.sampled_from([0, 1, 2, 4, 5, 7, 9, 10, 11, 12, 13, 99])), 1, short)
        return b"Exif\0\0" + tiff_block([entry], order), None
    if kind == "count":
        count = draw(st.sampled_from([0, 2, 3, 1000, 2**31, 2**32 - 1]))
        return b"Exif\0\0" + tiff_block([(EXIF_ORIENTATION, 3, count, short)], order), None
    if kind == "offset":
        offset = draw(st.sampled_from([0, 7, 9, 1000, 2**31, 2**32 - 1]))
        return b"Exif\0\0" + tiff_block([(EXIF_ORIENTATION, 3, 1, short)], order, ifd_offset=offset), None
    if kind == "loop":  # the IFD's next pointer leads to itself, or an EXIF sub-IFD pointer to its parent
        entries = [(EXIF_ORIENTATION, 3, 1, short), (0x8769, 4, 1, struct.pack(end + "I", 8))]
        return b"Exif\0\0" + tiff_block(entries, order, next_ifd=8), None
    if kind == "order":
        return b"Exif\0\0" + draw(st.sampled_from([b"XX", b"IM", b"\0\0"])) + tiff_block([], order)[2:], None
    if kind == "truncated":
        block = tiff_block([(EXIF_ORIENTATION, 3, 1, short), (0x010F, 2, 20, b"\0\0\0\x40")], order)
        return b"Exif\0\0" + block[:draw(st.integers(0, len(block) - 1))], None
    return b"Exif\0\0" + draw(st.binary(max_size=300)), None


@st.composite
def exif_images(draw: st.DrawFn, limits: Limits, photos: Sequence[bytes] = ()) -> Case:
    """A photo carrying an EXIF orientation (valid, invalid or in a corrupt block): it classifies, a valid
    orientation turning the answer's size and an invalid one leaving it."""
    fmt = draw(st.sampled_from(["JPEG", "PNG", "WEBP", "TIFF"]))
    width, height = draw(st.tuples(st.integers(1, 400), st.integers(1, 400)))
    kind, seed = draw(st.sampled_from(["noise", "photo"])), draw(st.integers(0, 2**32))
    image = content(kind, (width, height), seed, photos)
    exif, orientation = draw(exif_blocks())
    if fmt == "TIFF":  # the orientation is a tag of the TIFF itself
        orientation = draw(st.one_of(st.integers(1, 8), st.sampled_from([0, 9, 65535])))
        data = encode(image, fmt, tiffinfo={EXIF_ORIENTATION: orientation})
        exif = b""
    else:
        data = encode(image, fmt, exif=exif)
    if orientation is None:  # what a corrupt block says is anyone's guess; the pixels are fine all the same
        sizes = frozenset({(width, height), (height, width)})
    else:
        sizes = frozenset({(height, width) if orientation in (5, 6, 7, 8) else (width, height)})
    return upload("exif", f"{fmt} {width}x{height} orientation={orientation} exif={exif[:40]!r}", data, limits,
                  f"exif.{fmt.lower()}", "ok", sizes)


# ---- formats the service refuses, and headers that lie ------------------------------------------------------

@st.composite
def other_formats(draw: st.DrawFn, limits: Limits) -> Case:
    """A format Pillow reads (or writes) that the service does not take: refused, naming the supported ones."""
    fmt = draw(st.sampled_from([f for f in WRITABLE if f not in SUPPORTED_FORMATS and savable_modes(f)]))
    mode = draw(st.sampled_from(savable_modes(fmt)))
    size = draw(st.tuples(st.integers(1, 128), st.integers(1, 128)))
    if fmt in ("ICO", "ICNS"):
        size = (max(size), max(size))
    image = in_mode(content("noise", size, draw(st.integers(0, 2**32)), ()), mode)
    data = encode(image, fmt)
    return upload("other-format", f"{fmt} {mode} {size[0]}x{size[1]}", data, limits, f"other.{fmt.lower()}",
                  "refused")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def gif_descriptor(data: bytes) -> int:
    """Where a GIF's first image descriptor starts: after the colour table and any extension blocks."""
    i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[i] == 0x21:  # an extension: its label, then sub-blocks up to an empty one
        i += 2
        while data[i]:
            i += data[i] + 1
        i += 1
    return i


@st.composite
def lying_headers(draw: st.DrawFn, limits: Limits) -> Case:
    """A small file whose header claims another size (a decompression bomb's calling card): over the pixel
    limit it must be refused; under it, answered either way."""
    width, height = draw(st.tuples(st.integers(1, 65_535), st.integers(1, 65_535)))
    fmt = draw(st.sampled_from(["JPEG", "PNG", "GIF", "BMP"]))
    if fmt == "JPEG":
        real = bytearray(encode(Image.new("L", (16, 16), draw(st.integers(0, 255))), "JPEG",
                                progressive=draw(st.booleans())))
        sof = max(real.find(b"\xff\xc0"), real.find(b"\xff\xc2"))
        real[sof + 5:sof + 9] = struct.pack(">HH", height, width)
        data = bytes(real)
    elif fmt == "PNG":
        header = struct.pack(">IIBBBBB", width, height, 8, draw(st.sampled_from([0, 2, 3, 4, 6])), 0, 0, 0)
        rows = zlib.compress(b"\0" * draw(st.integers(0, 4096)))
        data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows)
                + png_chunk(b"IEND", b""))
    elif fmt == "GIF":
        real = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
        real[6:10] = struct.pack("<HH", width, height)  # the logical screen
        if draw(st.booleans()):  # and the image descriptor
            start = gif_descriptor(bytes(real))
            real[start + 5:start + 9] = struct.pack("<HH", width, height)
        data = bytes(real)
    else:
        real = bytearray(encode(Image.new("RGB", (16, 16)), "BMP"))
        real[18:26] = struct.pack("<ii", width, height * draw(st.sampled_from([1, -1])))
        data = bytes(real)
    expect: Expect = "refused" if width * height > limits.max_pixels else "any"
    return upload("lying-header", f"{fmt} claiming {width}x{height}", data, limits, f"lying.{fmt.lower()}", expect)


# ---- byte mutations of real photos ---------------------------------------------------------------------------

def dataset_photos(raw: Path, count: int = 40) -> list[tuple[str, bytes]]:
    """Up to `count` photos of data/raw (name, bytes), spread over its file types and sizes, in a fixed order."""
    files = sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    by_type: dict[str, list[Path]] = {}
    for path in sorted(files, key=lambda p: (p.stat().st_size, p)):
        by_type.setdefault(path.suffix.lower(), []).append(path)
    chosen: list[Path] = []
    while len(chosen) < count and any(by_type.values()):
        for paths in by_type.values():  # round robin over the types, from each type's smallest and largest
            if paths and len(chosen) < count:
                chosen.append(paths.pop(0 if len(chosen) % 2 else -1))
    return [(p.name, p.read_bytes()) for p in sorted(chosen)]


def mutation(draw: st.DrawFn, data: bytes, others: Sequence[bytes] = ()) -> tuple[bytes, str]:
    """One damage a file suffers on the way: truncation, bit flips, bytes inserted, deleted, overwritten or
    repeated, a corrupted header or JPEG marker, or another file's tail spliced on (one of `others`)."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite", "repeat", "header", "marker",
                                 *(["splice"] if others else [])]))
    n = len(data)
    # Positions are drawn near the start as often as anywhere: the headers decide the most.
    at = draw(st.one_of(st.integers(0, min(n, 2048)), st.integers(0, n)))
    span = draw(st.integers(1, 4096))
    if kind == "truncate":
        return data[:at], f"truncated at {at}"
    if kind == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 7)),
                              min_size=1, max_size=16))
        out = bytearray(data)
        for position, bit in flips:
            if position < len(out):
                out[position] ^= 1 << bit
        return bytes(out), f"{len(flips)} bits flipped ({flips[:4]}...)"
    if kind == "insert":
        extra = draw(st.one_of(st.binary(min_size=1, max_size=64),
                               st.sampled_from([b"\xff", b"\xff\xd9", b"\xff\xda", b"\0" * 1000])))
        return data[:at] + extra + data[at:], f"{len(extra)} bytes inserted at {at}"
    if kind == "delete":
        return data[:at] + data[at + span:], f"{span} bytes deleted at {at}"
    if kind == "overwrite":
        fill = draw(st.sampled_from([b"\0", b"\xff", b"\x80"]))
        return data[:at] + fill * span + data[at + span:], f"{span} bytes at {at} set to {fill!r}"
    if kind == "repeat":
        times = draw(st.integers(2, 50))
        return data[:at] + data[at:at + span] * times + data[at + span:], f"{span} bytes at {at} repeated {times}x"
    if kind == "splice":
        other = draw(st.sampled_from(others))
        cut = draw(st.integers(0, len(other)))
        return data[:at] + other[cut:], f"cut at {at}, another file's bytes from {cut} on"
    if kind == "header":
        out = bytearray(data)
        for position, value in draw(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1,
                                             max_size=6)):
            if position < len(out):
                out[position] = value
        return bytes(out), "header bytes changed"
    markers = [m.start() for m in re.finditer(rb"\xff[\xc0-\xfe]", data[:65536])]
    if not markers:
        return data[:at], f"truncated at {at} (no marker)"
    position = draw(st.sampled_from(markers))
    value = draw(st.integers(0, 255))
    out = bytearray(data)
    out[position + 1] = value
    return bytes(out), f"marker at {position} became ff{value:02x}"


@st.composite
def mutated_photos(draw: st.DrawFn, limits: Limits, photos: Sequence[tuple[str, bytes]]) -> Case:
    """A dataset photo with one to three damages: classified or refused, never a 5xx."""
    name, data = draw(st.sampled_from(photos))
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        data, step = mutation(draw, data, [d for _, d in photos])
        steps.append(step)
    return upload("mutation", f"{name}: {'; '.join(steps)}", data, limits, name)


# ---- the legacy route and malformed requests -----------------------------------------------------------------

def data_url_of(draw: st.DrawFn, data: bytes) -> tuple[str, str, bool]:
    """`data` as the legacy route's field, well formed or not: (value, how, whether the service can read it)."""
    encoded = base64.b64encode(data).decode()
    how = draw(st.sampled_from(["data-url", "other-mime", "bare", "wrapped", "no-base64", "urlsafe", "unpadded",
                                "non-ascii", "empty"]))
    if how == "data-url":
        return f"data:image/jpeg;base64,{encoded}", how, True
    if how == "other-mime":
        mime = draw(st.sampled_from(["image/png", "text/plain", "", "application/octet-stream;charset=utf-8"]))
        return f"data:{mime};base64,{encoded}", how, True
    if how == "bare":
        return encoded, how, True
    if how == "wrapped":  # MIME-style line breaks every 76 characters
        lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
        return "data:image/jpeg;base64," + "\r\n".join(lines), how, True
    if how == "no-base64":
        return f"data:image/jpeg,{encoded}", how, False
    if how == "urlsafe":  # readable only while the photo's base64 has no '+' or '/'
        urlsafe = base64.urlsafe_b64encode(data).decode()
        return "data:image/jpeg;base64," + urlsafe, how, urlsafe == encoded
    if how == "unpadded":
        return "data:image/jpeg;base64," + encoded.rstrip("="), how, not encoded.endswith("=")
    if how == "non-ascii":
        return "data:image/jpeg;base64,é" + encoded, how, False
    return "data:image/jpeg;base64,", how, False


@st.composite
def legacy_requests(draw: st.DrawFn, limits: Limits, photos: Sequence[tuple[str, bytes]]) -> Case:
    """POST /classify_image with a data URL of a real, generated or damaged photo, form-encoded or multipart."""
    source = draw(st.sampled_from(["photo", "image", "mutation"]))
    if source == "photo" and photos:
        name, data = draw(st.sampled_from(photos))
        expect_image: Expect = "ok"
    elif source == "mutation" and photos:
        case = draw(mutated_photos(limits, photos))
        data, name, expect_image = case.payload, case.what, "any"
    else:
        case = draw(images(limits, [d for _, d in photos]))
        data, name, expect_image = case.payload, case.what, case.expect
    value, how, readable = data_url_of(draw, data)
    expect: Expect = expect_image if readable else "refused"
    if len(data) > limits.max_bytes:
        expect = "refused"
    what = f"{how} data URL of {name}, {len(data)} bytes"
    if draw(st.booleans()):
        return Case("legacy", what, "/classify_image", expect, form={"image_data": value})
    return Case("legacy", what + " (multipart)", "/classify_image", expect,
                files=[("image_data", (None, value.encode(), "text/plain"))])


def multipart(parts: Sequence[tuple[str, str | None, bytes]], boundary: str = "fuzzboundary") -> bytes:
    """A multipart/form-data body of (field, filename, bytes) parts."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


@st.composite
def malformed_requests(draw: st.DrawFn, photos: Sequence[tuple[str, bytes]]) -> Case:
    """Requests a careless client sends: the wrong content type, method or route, no or an empty field, two
    files, a broken multipart body, a field without a file name, odd file names, a chunked or gzipped body."""
    path = draw(st.sampled_from(["/classify", "/classify_image"]))
    photo = draw(st.sampled_from(photos))[1] if photos else encode(Image.new("RGB", (32, 32)), "JPEG")
    body = multipart([("image", "a.jpg", photo)])
    kind = draw(st.sampled_from(["content-type", "missing-field", "empty-file", "two-files", "no-filename",
                                 "filename", "broken-multipart", "raw-photo", "extra-fields", "method", "route",
                                 "chunked", "gzip"]))
    multipart_type = {"content-type": "multipart/form-data; boundary=fuzzboundary"}
    if kind == "method":  # HEAD is left out: its answers have no body to be JSON
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
        return Case("malformed", f"{kind} {method}", path, "refused", content=body, headers=multipart_type,
                    method=method)
    if kind == "route":
        route = draw(st.sampled_from(["/CLASSIFY", "/classify_images", "/classify%00", "/static/../bbt/serving/service.py",
                                      "/classify/../readyz", "/docs", "/metrics/x"]))
        return Case("malformed", f"{kind} {route}", route, "refused", content=body, headers=multipart_type)
    if kind == "chunked":
        return Case("malformed", kind, path, "any", content=body, headers=multipart_type, chunked=True)
    if kind == "gzip":
        return Case("malformed", kind, path, "any", content=gzip.compress(body),
                    headers={**multipart_type, "content-encoding": "gzip"})
    if kind == "content-type":
        content_type = draw(st.sampled_from(["text/plain", "application/json", "image/jpeg", "multipart/form-data",
                                             "multipart/form-data; boundary=", "multipart/form-data; boundary=other",
                                             "multipart/mixed; boundary=fuzzboundary",
                                             "application/x-www-form-urlencoded", "", "*/*",
                                             "multipart/form-data; boundary=fuzzboundary; charset=ebcdic"]))
        return Case("malformed", f"{kind} {content_type!r}", path, "any", content=body,
                    headers={"content-type": content_type})
    if kind == "missing-field":
        field_name = draw(st.sampled_from(["photo", "file", "", "IMAGE", "image ", "image_data", "image[]"]))
        return Case("malformed", f"{kind} {field_name!r}", path, "any",
                    files=[(field_name, ("a.jpg", photo, "image/jpeg"))])
    if kind == "empty-file":
        field_name = "image" if path == "/classify" else "image_data"
        return Case("malformed", kind, path, "refused", files=[(field_name, ("a.jpg", b"", "image/jpeg"))])
    if kind == "two-files":
        second = draw(st.sampled_from([photo, b"", b"not an image"]))
        return Case("malformed", f"{kind} (second {len(second)} bytes)", path, "any",
                    files=[("image", ("a.jpg", photo, "image/jpeg")), ("image", ("b.jpg", second, "image/jpeg"))])
    if kind == "no-filename":
        return Case("malformed", kind, path, "any", content=multipart([("image", None, photo)]),
                    headers=multipart_type)
    if kind == "filename":
        filename = draw(st.one_of(st.text(max_size=300), st.sampled_from(["../../etc/passwd", "a" * 5000, "\0",
                                                                          "C:\\photo.jpg", "фото.jpg"])))
        return Case("malformed", f"{kind} {filename[:40]!r}", path, "any", content=multipart(
            [("image", filename.replace('"', "'").replace("\r", "").replace("\n", ""), photo)]),
            headers=multipart_type)
    if kind == "broken-multipart":
        broken, how = mutation(draw, body[:200] + body[-200:] if len(body) > 400 else body)
        return Case("malformed", f"{kind}: {how}", path, "any", content=broken,
                    headers=multipart_type)
    if kind == "raw-photo":
        return Case("malformed", kind, path, "refused", content=photo, headers={"content-type": "image/jpeg"})
    extra = draw(st.lists(st.tuples(st.text("abcxyz_", min_size=1, max_size=8), st.binary(max_size=50)),
                          max_size=12))
    return Case("malformed", f"{kind} {len(extra)}", path, "any", content=multipart(
        [(name, None, value) for name, value in extra] + [("image", "a.jpg", photo)]),
        headers=multipart_type)


def uploads(limits: Limits, photos: Sequence[tuple[str, bytes]]) -> dict[str, st.SearchStrategy[Case]]:
    """Every family of cases, by name (the benchmark's --only and its report use these names)."""
    pixels = [data for _, data in photos]
    return {
        "image": images(limits, pixels),
        "large": large_images(limits),
        "exif": exif_images(limits, pixels),
        "other-format": other_formats(limits),
        "lying-header": lying_headers(limits),
        "mutation": mutated_photos(limits, photos),
        "legacy": legacy_requests(limits, photos),
        "malformed": malformed_requests(photos),
    }
