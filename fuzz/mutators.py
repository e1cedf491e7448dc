"""Seed files and the mutations the fuzz harness applies to them.

Seeds are the real slides and images of ``../shared/data`` (an Aperio SVS with JPEG tiles, one
with JPEG 2000 tiles, a plain TIFF, PNG, JPEG, BMP and TIFF tiles), plus files the harness
generates itself (a small pyramidal BigTIFF from :func:`histoscope.datasets.synthetic_slide`,
PNG / JPEG / TIFF pictures from scikit-image, ``.npy`` batches) so that it also runs where
``../shared`` is absent.

A mutation is a pure function of ``(seed bytes, seed facts, random.Random)``: the same case
number always gives the same file. The format-aware ones edit the fields a reader trusts:
TIFF tag values (image and tile sizes, data offsets and byte counts, compression, samples
per pixel) located with tifffile, PNG IHDR (with a valid CRC, so the lie reaches the decoder)
and JPEG SOF dimensions.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Seed", "MUTATORS", "find_seeds", "generated_seeds", "mutate"]

#: Sizes a mutated header may declare: zero, one, odd, past 2^16, 10^6, past 2^31, the largest.
HUGE = (0, 1, 3, 65537, 1_000_000, 2**31 + 7, 2**32 - 1)
MAGICS = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00\x08\x00\x00\x00",
    b"BM",
    b"GIF89a",
    b"PK\x03\x04",
    b"\x93NUMPY",
    b"%PDF-1.4",
    b"<html>",
    b"",
)
#: TIFF tags worth lying about: sizes, where the data is, how it is coded.
TIFF_TAGS = {
    256: "ImageWidth",
    257: "ImageLength",
    258: "BitsPerSample",
    259: "Compression",
    262: "PhotometricInterpretation",
    273: "StripOffsets",
    277: "SamplesPerPixel",
    278: "RowsPerStrip",
    279: "StripByteCounts",
    322: "TileWidth",
    323: "TileLength",
    324: "TileOffsets",
    325: "TileByteCounts",
    347: "JPEGTables",
    330: "SubIFDs",
}


@dataclass
class Field:
    """A header field of a seed file: where its value is and how it is coded."""

    name: str
    offset: int
    size: int  # bytes of one value
    count: int  # values stored contiguously
    byteorder: str  # "<" or ">"


@dataclass
class Seed:
    """One seed file and the facts the mutators use."""

    name: str
    kind: str  # "slide" (open_slide), "upload" (POST /predict body)
    suffix: str
    data: bytes
    content_type: str | None = None  # for uploads
    fields: list[Field] = field(default_factory=list)  # TIFF tags, PNG IHDR, JPEG SOF
    header_end: int = 4096  # bytes that hold the structure (biased mutations)


#: Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8, IFD8).
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def _tiff_fields(path: Path, data: bytes) -> tuple[list[Field], int]:
    import tifffile

    fields: list[Field] = []
    header_end = 0
    with tifffile.TiffFile(path) as tif:
        bo = tif.byteorder
        for page in tif.pages:
            for tag in page.tags.values():
                header_end = max(header_end, int(tag.offset) + 20)
                if tag.code not in TIFF_TAGS:
                    continue
                size = _TIFF_TYPE_SIZE.get(int(tag.dtype), 0)
                if size not in (1, 2, 4, 8):
                    continue
                fields.append(Field(TIFF_TAGS[tag.code], int(tag.valueoffset), size, int(tag.count), bo))
    return fields, max(header_end, 4096)


def _png_fields(data: bytes) -> list[Field]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return []
    return [Field("PNG width", 16, 4, 1, ">"), Field("PNG height", 20, 4, 1, ">")]


def _jpeg_fields(data: bytes) -> list[Field]:
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return [Field("JPEG height", i + 5, 2, 1, ">"), Field("JPEG width", i + 7, 2, 1, ">")]
        i += 2 + length
    return []


def _facts(path: Path, data: bytes) -> tuple[list[Field], int]:
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            return _tiff_fields(path, data)
        except Exception:
            return [], 4096
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_fields(data), 256
    if data[:2] == b"\xff\xd8":
        return _jpeg_fields(data), 1024
    return [], 256


_CTYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".tif": "image/tiff", ".tiff": "image/tiff", ".npy": "application/x-npy"}


def _seed(path: Path, kind: str) -> Seed:
    data = path.read_bytes()
    fields, header_end = _facts(path, data)
    return Seed(f"{path.parent.name}/{path.name}", kind, path.suffix.lower(), data, _CTYPES.get(path.suffix.lower()), fields, header_end)


def find_seeds(shared: Path | None, work: Path) -> list[Seed]:
    """Real seeds from ``shared`` (``../shared/data``) when given, plus the generated ones."""
    seeds = generated_seeds(work)
    if shared is None or not shared.is_dir():
        return seeds
    slide_files = [
        "slides/CMU-1-Small-Region.svs",
        "slides/tcga-cr-7395-01a-01-ts1.svs",
        "ihc/kidney-48-5.tif",
        "stain_targets/histolab/tcga-lung-rgb.png",
        "stain_targets/torchstain/target.png",
        "thumbnails/wsi-blue-pen.png",
    ]
    globs = ["monuseg/images/*.png", "glas/images/*", "mitosis/amibr_128/*.png", "crc_tiles/*/*/*.tif", "crc_tiles/*/*.jpg"]
    paths = [shared / f for f in slide_files if (shared / f).is_file()]
    for g in globs:
        paths += sorted(shared.glob(g))[:2]
    seeds += [_seed(p, "slide") for p in paths]
    for g in ["mitosis/amibr_128/*.png", "crc_tiles/*/*.jpg", "crc_tiles/*/*/*.tif", "stain_targets/histolab/tcga-lung-rgb.png"]:
        seeds += [_seed(p, "upload") for p in sorted(shared.glob(g))[:2]]
    return seeds


def generated_seeds(work: Path) -> list[Seed]:
    """Seeds the harness makes itself: a pyramidal BigTIFF, PNG / JPEG / TIFF pictures, .npy batches."""
    import io

    import numpy as np
    import tifffile
    from PIL import Image
    from skimage import data as skdata

    from histoscope.datasets import synthetic_slide

    work.mkdir(parents=True, exist_ok=True)
    tif = work / "synthetic-1536.tiff"
    if not tif.exists():
        synthetic_slide(tif, width=1536, height=1152, seed=3, n_mitoses=2, verbose=False)
    ihc = skdata.immunohistochemistry()[:192, :256]
    pics = {}
    for ext, fmt in ((".png", "PNG"), (".jpg", "JPEG")):
        p = work / f"ihc{ext}"
        if not p.exists():
            Image.fromarray(ihc).save(p, format=fmt)
        pics[ext] = p
    strip = work / "ihc-strips.tif"
    if not strip.exists():
        tifffile.imwrite(strip, ihc, photometric="rgb", rowsperstrip=16)
    npy = work / "batch.npy"
    if not npy.exists():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(np.stack([ihc[:64, :64], ihc[64:128, 64:128]])))
        npy.write_bytes(buf.getvalue())
    seeds = [_seed(tif, "slide"), _seed(pics[".png"], "slide"), _seed(pics[".jpg"], "slide"), _seed(strip, "slide")]
    seeds += [_seed(pics[".png"], "upload"), _seed(pics[".jpg"], "upload"), _seed(strip, "upload"), _seed(npy, "upload")]
    return seeds


# ---------------------------------------------------------------------- mutations
def _where(seed: Seed, rng: random.Random, n: int) -> int:
    """A position in the file, half the time inside its header structures."""
    if n <= 1:
        return 0
    if rng.random() < 0.5:
        return rng.randrange(min(n, seed.header_end))
    return rng.randrange(n)


def truncate(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    return data[: _where(seed, rng, len(data))]


def bit_flips(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8, 32))):
        i = _where(seed, rng, len(b))
        if b:
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def overwrite(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    b = bytearray(data)
    if not b:
        return bytes(b)
    i = _where(seed, rng, len(b))
    n = rng.choice((1, 2, 4, 8, 64, 512))
    fill = rng.choice((b"\x00", b"\xff", b"\x7f", None))
    chunk = bytes(rng.randrange(256) for _ in range(n)) if fill is None else fill * n
    b[i : i + n] = chunk[: len(b) - i]
    return bytes(b)


def wrong_header(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    magic = rng.choice(MAGICS)
    if rng.random() < 0.5:
        return magic + data[len(magic) :]
    return magic + data  # shifted: every offset is now wrong


def splice(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    i = _where(seed, rng, len(data))
    j = rng.randrange(len(data) + 1)
    insert = data[j : j + rng.choice((1, 7, 100, 4096))]
    return data[:i] + insert + data[i:]


def _set_field(data: bytes, f: Field, value: int, index: int = 0) -> bytes:
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(f.size)
    if fmt is None:
        return data
    value %= 256 ** f.size
    off = f.offset + index * f.size
    if off + f.size > len(data):
        return data
    b = bytearray(data)
    b[off : off + f.size] = struct.pack(f.byteorder + fmt, value)
    return bytes(b)


def _fix_png_crc(data: bytes) -> bytes:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 33:
        return data
    crc = zlib.crc32(data[12:29]) & 0xFFFFFFFF
    return data[:29] + struct.pack(">I", crc) + data[33:]


def header_field(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    """Lie in one structural field: a size (zero, huge: up to 2^32 - 1), an offset, a code."""
    if not seed.fields:
        return bit_flips(data, seed, rng)
    out = data
    for _ in range(rng.choice((1, 1, 2, 3))):
        f = rng.choice(seed.fields)
        index = rng.randrange(f.count) if f.count > 1 else 0
        if "Offsets" in f.name or "ByteCounts" in f.name:
            value = rng.choice((0, 1, len(data) - 1, len(data) + 10, 2**31, 2**32 - 1, rng.randrange(max(1, len(data)))))
        elif f.name in ("Compression", "PhotometricInterpretation", "BitsPerSample", "SamplesPerPixel"):
            value = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 33003, 34712, 65535))
        else:
            value = rng.choice(HUGE)
        # sometimes every value of a multi-valued tag (all tiles pointing at one place)
        if f.count > 1 and rng.random() < 0.2:
            for k in range(min(f.count, 4096)):
                out = _set_field(out, f, value, k)
        else:
            out = _set_field(out, f, value, index)
    return _fix_png_crc(out) if seed.suffix == ".png" and rng.random() < 0.9 else out


def huge_dimensions(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    """Declare a very large image (10^6 x 10^6 and beyond) or a zero-size one, keeping the rest."""
    dims = [f for f in seed.fields if f.name in ("ImageWidth", "ImageLength", "PNG width", "PNG height", "JPEG width", "JPEG height")]
    if not dims:
        return header_field(data, seed, rng)
    value = rng.choice((0, 1_000_000, 1_000_000, 2**31 - 1, 2**32 - 1, 65535))
    out = data
    chosen = dims if rng.random() < 0.5 else [rng.choice(dims)]
    for f in chosen:
        out = _set_field(out, f, value if f.size > 2 else min(value, 65535))
    return _fix_png_crc(out) if seed.suffix == ".png" else out


def empty_or_noise(data: bytes, seed: Seed, rng: random.Random) -> bytes:
    return rng.choice((b"", b"\x00", data[:8], bytes(rng.randrange(256) for _ in range(rng.choice((16, 300, 5000))))))


MUTATORS: dict[str, Callable[[bytes, Seed, random.Random], bytes]] = {
    "truncate": truncate,
    "bit_flips": bit_flips,
    "overwrite": overwrite,
    "wrong_header": wrong_header,
    "splice": splice,
    "header_field": header_field,
    "huge_dimensions": huge_dimensions,
    "empty_or_noise": empty_or_noise,
}
#: How often each mutation is drawn: structure-aware ones more often.
WEIGHTS = {"truncate": 2, "bit_flips": 3, "overwrite": 2, "wrong_header": 1, "splice": 1, "header_field": 4, "huge_dimensions": 2, "empty_or_noise": 0.3}


def mutate(seed: Seed, rng: random.Random, mutator: str | None = None) -> tuple[str, bytes]:
    """Apply one mutation (drawn by weight unless named); occasionally two stacked."""
    names = list(MUTATORS)
    name = mutator or rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
    out = MUTATORS[name](seed.data, seed, rng)
    if mutator is None and rng.random() < 0.15:
        second = rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
        out = MUTATORS[second](out, seed, rng)
        name = f"{name}+{second}"
    return name, out
