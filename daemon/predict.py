"""Still images for the ``predict`` command and ``POST /predict``: files and uploads decoded
safely (size checked from the header first, EXIF orientation applied), then read by a
``daemon.reader.Reader``.

Photos a person took: dark ink on light paper or light on dark, any size,
8/16-bit, gray, BGR or BGRA.
"""

import os
import struct

import cv2
import numpy as np

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 40 * 1000 * 1000  # refuse decompression bombs before decoding


class ImageError(Exception):
    """The input is not a usable image (message says why)."""


def image_dimensions(data):
    """(width, height) from the header of a PNG, JPEG, BMP, GIF, WebP, TIFF or PNM image, or
    None when the format is not one of these (or its header is cut short)."""
    for reader in (_webp_dimensions, _tiff_dimensions, _pnm_dimensions):
        found = reader(data)
        if found is not None:
            return found
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"\xff\xd8":
        offset = 2
        while offset + 9 < len(data):
            if data[offset] != 0xFF:
                return None
            marker = data[offset + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                offset += 2
                continue
            length = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
                return width, height
            offset += 2 + length
    return None


def _webp_dimensions(data):
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _tiff_dimensions(data):
    """Width and height of the first image of a TIFF (tags 256 and 257 of its first IFD)."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    tags = _first_ifd(data)
    if 256 in tags and 257 in tags:
        return tags[256], tags[257]
    return None


def _first_ifd(tiff):
    """{tag: value} of the SHORT and LONG entries of a TIFF's first IFD (a TIFF file, or the
    TIFF inside a JPEG's EXIF segment); {} when it cannot be read."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return {}
    order = "<" if tiff[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", tiff[4:8])[0]
    if offset + 2 > len(tiff):
        return {}
    count = struct.unpack(order + "H", tiff[offset : offset + 2])[0]
    tags = {}
    for index in range(count):
        entry = offset + 2 + 12 * index
        if entry + 12 > len(tiff):
            break
        tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if kind == 3:  # SHORT: the value sits in the first two bytes of the field
            tags[tag] = struct.unpack(order + "H", tiff[entry + 8 : entry + 10])[0]
        elif kind == 4:  # LONG
            tags[tag] = struct.unpack(order + "I", tiff[entry + 8 : entry + 12])[0]
    return tags


def _pnm_dimensions(data):
    """Width and height from a PBM/PGM/PPM header (P1-P6): magic, then two numbers, comments allowed."""
    if len(data) < 3 or data[:1] != b"P" or data[1:2] not in b"123456":
        return None
    numbers = []
    for line in data[2:512].split(b"\n"):
        numbers.extend(line.split(b"#")[0].split())
        if len(numbers) >= 2:
            try:
                return int(numbers[0]), int(numbers[1])
            except ValueError:
                return None
    return None


def exif_orientation(data):
    """The EXIF orientation (1-8) of a JPEG, or 1 when it has none or it cannot be read."""
    if data[:2] != b"\xff\xd8":
        return 1
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        length = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if marker == 0xDA:  # image data starts: no EXIF before it
            return 1
        if marker == 0xE1 and data[offset + 4 : offset + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[offset + 10 : offset + 2 + length])
        offset += 2 + length
    return 1


def _tiff_orientation(tiff):
    value = _first_ifd(tiff).get(0x0112, 1)
    return value if 1 <= value <= 8 else 1


def apply_orientation(image, orientation):
    """Turn decoded pixels the way EXIF ``orientation`` says they are to be shown."""
    if orientation in (2, 4, 5, 7):
        image = cv2.flip(image, 1)  # mirrored ones: flip, then rotate as their unmirrored twin
        orientation = {2: 1, 4: 3, 5: 8, 7: 6}[orientation]  # 5 = flip + 270 cw; 7 = flip + 90 cw
    rotation = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}
    if orientation in rotation:
        image = cv2.rotate(image, rotation[orientation])
    return image


def decode_image(data, max_pixels=MAX_PIXELS):
    """Bytes -> numpy image (any depth/channels). Raises ImageError with a reason."""
    if not data:
        raise ImageError("empty input")
    dims = image_dimensions(data)
    if dims is None:
        # OpenCV also decodes JPEG 2000, OpenEXR, Radiance HDR and more; their size cannot be
        # read here first, and a few kilobytes of them can decode into gigabytes
        raise ImageError(
            "not a decodable image: unsupported format or unreadable header (read: PNG, JPEG, BMP, "
            "GIF, WebP, TIFF, PNM, whose size is checked before decoding)"
        )
    width, height = dims
    if width <= 0 or height <= 0:
        raise ImageError("image header says %dx%d pixels" % (width, height))
    if width * height > max_pixels:
        raise ImageError("image of %dx%d pixels exceeds the limit of %d pixels" % (width, height, max_pixels))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError("not a decodable image (corrupt, truncated or unsupported format)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError("image of %dx%d pixels exceeds the limit" % (image.shape[1], image.shape[0]))
    # A phone stores a portrait photo sideways and says so in EXIF; show it as the phone did.
    return apply_orientation(image, exif_orientation(data))


def read_file(reader, path, roi_mode="center"):
    """Read an image file with a ``daemon.reader.Reader``: the predict JSON object, ``file``
    included. Raises ImageError when the file cannot be read or decoded."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ImageError("file of %d bytes exceeds %d" % (size, MAX_FILE_BYTES))
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError("cannot read: %s" % (exc.strerror or exc)) from exc
    result = {"file": path}
    result.update(reader.read_still(decode_image(data), roi_mode))
    return result


def describe(result):
    """One human line for a predict result."""
    if not result["digits"]:
        return "%s: no digit found" % result["file"]
    parts = ", ".join(
        "%s (%.2f)" % ("?" if d["digit"] is None else d["digit"], d["confidence"]) for d in result["digits"]
    )
    return "%s: %s  [%s]" % (result["file"], result["number"], parts)
