"""Image width and height read from a file's header, before anything is decoded.

Decoding allocates width x height x channels samples however small the file is (a 20000 x
20000 PNG of one colour is 424 KB on disk and 1.2 GB decoded), so the pixel budget in
`frames.read_image` must be checked on the header. The formats OpenCV decodes are parsed:
PNG, JPEG, BMP, TIFF (classic and BigTIFF), WebP, PNM/PAM/PFM, Radiance HDR, OpenEXR, JPEG 2000
and Sun raster.
See docs/native-guards.md.
"""

from __future__ import annotations

import re
import struct

# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from an encoded image's header; None when the header is not
    one of the parsed formats or is malformed (the caller treats that as unreadable)."""
    try:
        for parse in _PARSERS:
            size = parse(data)
            if size is not None:
                w, h = size
                return (int(w), int(h)) if w > 0 and h > 0 else None
    except (struct.error, ValueError, IndexError):
        return None
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return w, h
        pos += 2 + length
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM" or len(data) < 26:
        return None
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return w, abs(h)  # negative height = rows stored top-down


def _tiff(data: bytes) -> tuple[int, int] | None:
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        big = False
    elif data[:4] in (b"II+\x00", b"MM\x00+"):
        big = True
    else:
        return None
    e = "<" if data[:2] == b"II" else ">"
    if big:
        (ifd,) = struct.unpack(e + "Q", data[8:16])
        (count,) = struct.unpack(e + "Q", data[ifd:ifd + 8])
        first, entry_size, value_at = ifd + 8, 20, 12
    else:
        (ifd,) = struct.unpack(e + "I", data[4:8])
        (count,) = struct.unpack(e + "H", data[ifd:ifd + 2])
        first, entry_size, value_at = ifd + 2, 12, 8
    found: dict[int, int] = {}
    for i in range(min(count, 4096)):
        entry = data[first + i * entry_size: first + (i + 1) * entry_size]
        tag, typ = struct.unpack(e + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3), LONG (4) or LONG8 (16)
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                return None
            (found[tag],) = struct.unpack(e + fmt, entry[value_at:value_at
                                                          + struct.calcsize(fmt)])
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit width-1 and height-1
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: key frame start code 9d 01 2a, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


_PNM_TOKEN = re.compile(rb"(?:\s+|#[^\n]*\n?)*(\S+)")


def _pnm(data: bytes) -> tuple[int, int] | None:
    if data[:1] != b"P" or len(data) < 3 or data[1:2] not in b"1234567Ff":
        return None
    if data[1:2] == b"7":  # PAM: WIDTH / HEIGHT lines up to ENDHDR
        header = data[:4096].split(b"ENDHDR", 1)[0]
        w = re.search(rb"\bWIDTH\s+(\d+)", header)
        h = re.search(rb"\bHEIGHT\s+(\d+)", header)
        return (int(w.group(1)), int(h.group(1))) if w and h else None
    pos, values = 2, []
    while len(values) < 2:
        match = _PNM_TOKEN.match(data, pos)
        if match is None or not match.group(1).isdigit():
            return None
        values.append(int(match.group(1)))
        pos = match.end()
    return values[0], values[1]


_HDR_SIZE = re.compile(rb"\n([-+])([XY]) (\d+) ([-+])([XY]) (\d+)\r?\n")


def _hdr(data: bytes) -> tuple[int, int] | None:
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        return None
    match = _HDR_SIZE.search(data[:65536])
    if match is None:
        return None
    first, second = int(match.group(3)), int(match.group(6))
    # "-Y H +X W" (the usual) names rows first; "+X W -Y H" names columns first.
    return (second, first) if match.group(2) == b"Y" else (first, second)


def _exr(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"\x76\x2f\x31\x01":
        return None
    pos = 8
    while pos < min(len(data), 1 << 20):
        end = data.index(b"\x00", pos)
        name = data[pos:end]
        if not name:
            return None  # end of header without a data window
        type_end = data.index(b"\x00", end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1:type_end + 5])
        value = data[type_end + 5:type_end + 5 + size]
        if name == b"dataWindow":
            x0, y0, x1, y1 = struct.unpack("<iiii", value[:16])
            return x1 - x0 + 1, y1 - y0 + 1
        pos = type_end + 5 + size
    return None


def _sun_raster(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"\x59\xa6\x6a\x95":
        return None
    return struct.unpack(">II", data[4:12])


def _jp2(data: bytes) -> tuple[int, int] | None:
    if data[:4] == b"\xff\x4f\xff\x51":  # raw codestream: SIZ marker right after SOC
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
        return xsiz - xo, ysiz - yo
    if data[4:12] != b"jP  \r\n\x87\n":
        return None
    at = data.find(b"ihdr", 0, 1 << 16)  # image header box inside the jp2h box
    if at < 0:
        return None
    h, w = struct.unpack(">II", data[at + 4:at + 12])
    return w, h


_PARSERS = (_png, _jpeg, _bmp, _tiff, _webp, _pnm, _hdr, _exr, _jp2, _sun_raster)
