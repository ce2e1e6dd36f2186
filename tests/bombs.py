"""Hostile photos of issue 26, generated: for the tests of the photo processes and benchmarks/memory.py."""

from __future__ import annotations

import io
import struct

from PIL import Image


def jpeg(width: int = 160, height: int = 120, progressive: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "JPEG", progressive=progressive)
    return buffer.getvalue()


def fill_bomb(fill_bytes: int = 10_000_000) -> bytes:
    """A 64x48 JPEG with megabytes of 0xFF fill before its scan: valid (libjpeg skips fill), and seconds of CPU
    in Pillow's marker parser (3.5 s for 10 MB here)."""
    plain = jpeg(64, 48)
    scan = plain.index(b"\xff\xda")
    return plain[:scan] + b"\xff" * fill_bytes + plain[scan:]


def exif_bomb(exif_mb: float = 9.0) -> bytes:
    """A 64x64 JPEG whose EXIF, split over APP1 segments (which Pillow joins), holds an orientation array of
    millions of entries: +150-290 MiB as Python integers."""
    count = int(exif_mb * 1024 * 1024 / 2)
    tiff = (b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHII", 0x0112, 3, count, 26)
            + struct.pack(">I", 0) + b"\x00\x01" * count)
    part_size = 65533 - 2 - 6
    segments = b"".join(b"\xff\xe1" + struct.pack(">H", len(part) + 8) + b"Exif\x00\x00" + part
                        for part in (tiff[i:i + part_size] for i in range(0, len(tiff), part_size)))
    plain = jpeg(64, 64)
    return plain[:2] + segments + plain[2:]


def hidden_scan_bomb(repeats: int = 3000, side: int = 2000) -> bytes:
    """A progressive JPEG repeating its last scan, with a 0x00 before its first scan: the byte that hid every scan
    from the scan count before issue 26 (libjpeg skips it and decodes them all)."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    first, last = data.index(b"\xff\xda"), data.rindex(b"\xff\xda")
    return data[:first] + b"\x00" + data[first:last] + data[last:-2] * repeats + data[-2:]
