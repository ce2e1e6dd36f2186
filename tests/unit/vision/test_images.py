"""decode_image on small generated images of every kind an upload or the dataset can hold."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bbt.vision.images import ImageError, decode_image, decode_photo


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 40, height: int = 30) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1)), np.full((height, width), 60, np.uint8),
                    np.full((height, width), 200, np.uint8)], axis=2)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_bgr(fmt: str) -> None:
    decoded = decode_image(encode(gradient(), fmt), "photo")
    assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
    # RGB (.., 60, 200) comes back as BGR (200, 60, ..), give or take lossy coding
    assert abs(int(decoded[15, 5, 0]) - 200) < 12 and abs(int(decoded[15, 5, 1]) - 60) < 12


def test_grayscale_becomes_three_equal_channels() -> None:
    decoded = decode_image(encode(gradient().convert("L"), "PNG"))
    assert decoded.shape == (30, 40, 3)
    assert np.array_equal(decoded[..., 0], decoded[..., 2])


def test_alpha_is_dropped_like_opencv() -> None:
    rgba = gradient().convert("RGBA")
    rgba.putalpha(0)
    decoded = decode_image(encode(rgba, "PNG"))
    assert decoded.shape == (30, 40, 3)
    assert decoded[0, 0, 0] == 200


def test_sixteen_bit_grayscale_is_scaled_to_eight_bit() -> None:
    wide = Image.fromarray(np.full((10, 12), 65535, np.uint16))
    decoded = decode_image(encode(wide, "PNG"))
    assert decoded.shape == (10, 12, 3) and decoded.max() == 255


def test_cmyk_jpeg_decodes() -> None:
    decoded = decode_image(encode(gradient().convert("CMYK"), "JPEG"))
    assert decoded.shape == (30, 40, 3)


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(data)
    assert decoded[4, 4, 2] > 200 and decoded[4, 4, 0] < 50  # red, in BGR order


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(gradient(40, 30), "JPEG", exif=exif.tobytes()))
    assert decoded.shape == (40, 30, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a recognised image"),
    ],
)
def test_non_images_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data, "upload.bin")


def test_truncated_file_is_refused() -> None:
    data = encode(gradient(200, 200), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2], "half.jpg")


def test_unsupported_format_is_named() -> None:
    with pytest.raises(ImageError, match="favicon.ico is in ICO format, which is not supported"):
        decode_image(encode(gradient(16, 16), "ICO"), "favicon.ico")


def test_pixel_limit_is_checked_before_decoding() -> None:
    bomb = encode(Image.new("1", (9000, 5000)), "PNG")  # 45 MP in a few kilobytes
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="megapixel"):
        decode_image(bomb, "bomb.png", max_pixels=40_000_000)


@pytest.mark.parametrize(("min_side", "expected"), [(0, (2000, 3000)), (1280, (1000, 1500)), (700, (500, 750)),
                                                    (300, (250, 375)), (3000, (2000, 3000))])
def test_large_jpegs_are_decoded_reduced_but_never_below_min_side(min_side: int, expected: tuple[int, int]) -> None:
    photo = decode_photo(encode(gradient(3000, 2000), "JPEG"), "photo", min_side=min_side)
    assert photo.image.shape[:2] == expected  # DCT scaling: 1/1, 1/2, 1/4 or 1/8
    assert photo.size == (3000, 2000)
    assert photo.scale == (expected[1] / 3000, expected[0] / 2000)
    assert max(photo.image.shape[:2]) >= min(min_side, 3000)


def test_a_reduced_rotated_jpeg_keeps_its_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = decode_photo(encode(gradient(3000, 2000), "JPEG", exif=exif.tobytes()), "photo", min_side=1280)
    assert photo.size == (2000, 3000) and photo.image.shape[:2] == (1500, 1000)
    assert photo.scale == (0.5, 0.5)


def test_other_formats_are_decoded_at_full_size() -> None:
    photo = decode_photo(encode(gradient(3000, 2000), "PNG"), "photo", min_side=1280)
    assert photo.image.shape[:2] == (2000, 3000) and photo.scale == (1.0, 1.0)


@pytest.mark.parametrize(("values", "expected"), [((0, 200), 200), ((0, 65535), 255), ((0, 3000), 11),
                                                  ((0, 2**31 - 1), 255), ((-5, 100), 100)],
                         ids=["8-bit", "16-bit", "dark-16-bit", "32-bit", "negative"])
def test_thirty_two_bit_integer_tiffs_are_neither_black_nor_white(values: tuple[int, int], expected: int) -> None:
    pixels = np.array([[values[0], values[1]]], dtype=np.int32).repeat(4, axis=0)
    decoded = decode_image(encode(Image.fromarray(pixels, "I"), "TIFF"))
    assert decoded[0, 0, 0] == 0 and decoded[0, 1, 0] == expected


def test_a_jpeg_repeating_its_last_scan_is_refused_before_decoding() -> None:
    """The decode bomb of issue 12: a progressive JPEG whose final scan is repeated; each repeat costs a pass."""
    from bbt.vision.images import MAX_JPEG_SCANS, jpeg_scans

    progressive = encode(gradient(200, 150), "JPEG", progressive=True)
    scans = jpeg_scans(progressive)
    assert scans == progressive.count(b"\xff\xda") and 2 <= scans <= 20
    assert decode_image(progressive).shape == (150, 200, 3)  # an ordinary one decodes
    # Bytes after the image (padding, a trailer) and marker-like bytes inside a segment's payload are no scans.
    exif = Image.Exif()
    exif[0x010E] = "\xff\xda" * 300  # ImageDescription
    padded = encode(gradient(200, 150), "JPEG", exif=exif.tobytes()) + b"\xff\xda" * 500
    assert jpeg_scans(padded) == 1 and decode_image(padded).shape == (150, 200, 3)
    last = progressive.rindex(b"\xff\xda")
    bomb = progressive[:last] + progressive[last:-2] * (MAX_JPEG_SCANS + 1) + progressive[-2:]
    with pytest.raises(ImageError, match=r"bomb.jpg is a JPEG of more than 100 scans \(photos have about 10\)"):
        decode_image(bomb, "bomb.jpg")


def with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) claiming another size: a forged or truncated file."""
    sof = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
    return jpeg[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9:]


def test_a_tiny_jpeg_claiming_a_huge_size_is_refused_before_decoding() -> None:
    """Issue 12: 334 bytes whose header says 6000x6000 decoded to 36 MP; each 8x8 block needs a bit at least."""
    small = encode(Image.new("L", (16, 16), 128), "JPEG")
    forged = with_declared_size(small, 6000, 6000)
    with pytest.raises(ImageError, match=r"forged.jpg declares 6000x6000 pixels but its \d+ bytes cannot hold"):
        decode_image(forged, "forged.jpg")
    # The floor is one bit per block: the flattest real JPEG of that size (grey, optimised tables) is above it.
    flat = encode(Image.new("L", (6000, 6000), 128), "JPEG", optimize=True)
    assert decode_photo(flat, min_side=1280).size == (6000, 6000)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F"])
def test_every_mode_converts_as_pillow_does(mode: str) -> None:
    """The memory-lean conversion (in place, band by band: 700 rows are several bands) gives the pixels of
    Pillow's own conversion, for values an 8-bit image can hold."""
    image = gradient(300, 700).convert(mode) if mode not in ("I", "F") else \
        Image.fromarray(np.asarray(gradient(300, 700).convert("L")).astype(np.int32), "I").convert(mode)
    expected = np.asarray(image.convert("RGB"))[:, :, ::-1]
    assert np.array_equal(decode_image(encode(image, "TIFF")), expected)


def test_sixteen_bit_bands_keep_their_top_byte() -> None:
    pixels = np.arange(700 * 3, dtype=np.uint16).reshape(700, 3) * 31
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"))
    assert np.array_equal(decoded[..., 1], (pixels >> 8).astype(np.uint8))


def test_decode_cost_bounds_what_decoding_allocates() -> None:
    from bbt.vision.images import DEFAULT_PEAK_BYTES_PER_PIXEL, decode_cost

    png = encode(Image.new("RGB", (4000, 3000)), "PNG")
    assert decode_cost(png) == 4000 * 3000 * DEFAULT_PEAK_BYTES_PER_PIXEL
    # A JPEG is costed at the reduced size it decodes at.
    jpeg = encode(Image.new("RGB", (4000, 3000)), "JPEG")
    assert decode_cost(jpeg, min_side=1280) == decode_photo(jpeg, min_side=1280).image.shape[0] * \
        decode_photo(jpeg, min_side=1280).image.shape[1] * DEFAULT_PEAK_BYTES_PER_PIXEL
    assert decode_cost(b"not an image") == 0


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG", "PNG", "WEBP"])
def test_a_rotated_photo_reports_its_upright_size_in_every_format(fmt: str) -> None:
    """Pillow turns a TIFF upright itself as it loads it (and drops the tag): the size must not be turned twice,
    or the answer's size and every box come out transposed (found by tests/test_fuzz.py)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it a quarter right: the left column becomes the top row
    options = {"tiffinfo": {0x0112: 6}} if fmt == "TIFF" else {"exif": exif.tobytes()}
    photo = decode_photo(encode(gradient(40, 30), fmt, **options))
    assert photo.size == (30, 40) and photo.image.shape == (40, 30, 3) and photo.scale == (1.0, 1.0)
    # Red (x in the stored image) runs down the upright one.
    assert photo.image[2, 15, 2] < 40 and photo.image[37, 15, 2] > 215


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("block", [b"XX\0*\0\0\0\x08", b"II*\0\x08\0"], ids=["byte-order", "truncated-header"])
def test_a_corrupt_exif_block_leaves_the_photo_as_stored(fmt: str, block: bytes) -> None:
    """The pixels are fine, only the metadata is broken (as viewers show it): decoded unturned, not refused."""
    photo = decode_photo(encode(gradient(40, 30), fmt, exif=b"Exif\0\0" + block))
    assert photo.size == (40, 30) and photo.image.shape == (30, 40, 3)


def test_a_rotated_photo_is_turned_even_when_pillow_cannot_rewrite_its_exif_block() -> None:
    """Pillow's exif_transpose writes the block back without the orientation, which fails for some blocks it
    reads, e.g. a DOUBLE pointing into the IFD itself: the photo must still be turned, not refused."""
    block = (b"II*\0\x08\0\0\0\x02\0"
             b"\x12\x01\x03\0\x01\0\0\0\x06\0\0\0"  # orientation: SHORT 6
             b"\x00\x90\x0c\0\x01\0\0\0\x08\0\0\0"  # ExifVersion as a DOUBLE at offset 8
             b"\0\0\0\0")
    photo = decode_photo(encode(gradient(40, 30), "PNG", exif=b"Exif\0\0" + block))
    assert photo.size == (30, 40) and photo.image.shape == (40, 30, 3)


@pytest.mark.parametrize("junk", [b"\x00", b"\xff" * 64, b"\x00\x13\x37", b"\xff\x00\xff\x00"])
def test_stray_and_fill_bytes_between_segments_hide_no_scan(junk: bytes) -> None:
    """Issue 26: libjpeg skips stray bytes and 0xFF fill before a marker and decodes every scan after them, so the
    scan walk steps over them too; a 0x00 before the first scan used to make it count none."""
    from bbt.vision.images import MAX_JPEG_SCANS, jpeg_scans

    progressive = encode(gradient(200, 150), "JPEG", progressive=True)
    first = progressive.index(b"\xff\xda")
    padded = progressive[:first] + junk + progressive[first:]
    assert jpeg_scans(padded) == jpeg_scans(progressive) >= 2
    assert decode_image(padded).shape == (150, 200, 3)  # libjpeg reads it, so it is a photo, not an error
    last = padded.rindex(b"\xff\xda")
    bomb = padded[:last] + (junk + padded[last:-2]) * (MAX_JPEG_SCANS + 1) + padded[-2:]
    assert jpeg_scans(bomb) > MAX_JPEG_SCANS
    with pytest.raises(ImageError, match="more than 100 scans"):
        decode_image(bomb, "bomb.jpg")



@pytest.mark.parametrize("options", [{"lossless": False}, {"lossless": True}, {"exif": b"Exif\x00\x00MM\x00\x2a"}],
                         ids=["VP8", "VP8L", "VP8X"])
def test_a_webps_size_is_read_without_opening_it(options: dict) -> None:
    """Pillow allocates a WebP's whole canvas when it opens one, so its size (and cost) is read from the bytes."""
    from bbt.vision.images import decode_cost, webp_size

    data = encode(gradient(301, 157), "WEBP", **options)
    assert webp_size(data) == (301, 157) == Image.open(io.BytesIO(data)).size
    assert decode_cost(data) == 301 * 157 * 19
    assert webp_size(encode(gradient(), "PNG")) is None
    with pytest.raises(ImageError, match=r"big.webp is 301x157 \(0.0 megapixels\), over the 0 megapixel limit"):
        decode_photo(data, "big.webp", max_pixels=301 * 157 - 1)
