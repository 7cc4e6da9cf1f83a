"""read_image: 16-bit files are scaled to 8 bits, not saturated or truncated."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from emanet.data.segmentation import read_image


def eight_bits(pixels):
    """round(value * 255 / 65535), computed independently of read_image (in float64)."""
    return np.rint(pixels.astype(np.float64) * 255 / 65535).astype(np.uint8)


def sixteen_bit_pixels(shape, seed):
    # The extremes and values either side of the rounding boundaries of the first levels.
    pixels = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    pixels.flat[:8] = [0, 65535, 128, 129, 385, 386, 32767, 32768]
    return pixels


def with_exif_orientation(png_path, orientation):
    """The PNG with an eXIf chunk after IHDR (Pillow cannot write 16-bit colour PNGs)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()[len(b"Exif\x00\x00") :]  # the chunk holds the TIFF structure alone
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    png = png_path.read_bytes()
    end_of_ihdr = 8 + 25  # signature, then IHDR: length, type, 13 bytes, CRC
    png_path.write_bytes(png[:end_of_ihdr] + chunk + png[end_of_ihdr:])


@pytest.mark.parametrize("name, mode, dtype", [("gray16.png", "I;16", "<u2"), ("gray16.tif", "I;16B", ">u2")])
def test_a_16_bit_grayscale_file_is_scaled_to_8_bits(tmp_path, name, mode, dtype):
    pixels = sixteen_bit_pixels((6, 9), seed=0)
    Image.frombytes(mode, (9, 6), pixels.astype(dtype).tobytes()).save(tmp_path / name)
    with Image.open(tmp_path / name) as image:
        assert image.mode == mode  # what Pillow's convert("RGB") turned white

    image = read_image(tmp_path / name)

    assert image.dtype == np.uint8 and image.shape == (6, 9, 3)
    np.testing.assert_array_equal(image, np.repeat(eight_bits(pixels)[..., None], 3, axis=2))


def test_a_32_bit_integer_image_is_read_as_16_bit_and_clipped(tmp_path):
    pixels = sixteen_bit_pixels((5, 4), seed=1).astype(np.int32)
    pixels[0, :2] = [-5, 70000]
    Image.fromarray(pixels).save(tmp_path / "int32.tif")
    with Image.open(tmp_path / "int32.tif") as image:
        assert image.mode == "I"

    expected = eight_bits(np.clip(pixels, 0, 65535))
    np.testing.assert_array_equal(read_image(tmp_path / "int32.tif"), np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize("name, channels", [("rgb16.png", 3), ("rgba16.png", 4), ("rgb16.tif", 3)])
def test_16_bit_colour_is_rounded_to_8_bits_not_truncated_to_its_high_byte(tmp_path, name, channels):
    pixels = sixteen_bit_pixels((7, 10, channels), seed=2)
    bgr_order = [2, 1, 0, 3][:channels]
    assert cv2.imwrite(str(tmp_path / name), pixels[..., bgr_order])

    image = read_image(tmp_path / name)

    np.testing.assert_array_equal(image, eight_bits(pixels[..., :3]))  # alpha dropped, as for 8-bit files


def test_16_bit_colour_is_turned_upright_as_its_exif_orientation_says(tmp_path):
    pixels = sixteen_bit_pixels((7, 10, 3), seed=3)
    cv2.imwrite(str(tmp_path / "phone.png"), pixels[..., ::-1])
    with_exif_orientation(tmp_path / "phone.png", 6)  # rotate 90 degrees clockwise to display

    np.testing.assert_array_equal(read_image(tmp_path / "phone.png"), eight_bits(pixels))
    np.testing.assert_array_equal(read_image(tmp_path / "phone.png", upright=True), np.rot90(eight_bits(pixels), -1))


def test_8_bit_files_are_decoded_as_before(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), pixels)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(pixels[..., :1], 3, axis=2))
