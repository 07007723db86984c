"""A corpus of odd and hostile inputs, generated here (never downloaded).

Each case: name -> (file name, bytes). `EXPECT` says whether a case should be classified
("verdict") or refused with a message ("message").
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.uid import JPEGLSLossless, RLELossless

from tests.conftest import png_bytes, synthetic_radiograph
from tests.dicom_fixtures import dicom_bytes, encapsulated_garbage, make_dicom, ramp
from tests.test_decode import huge_png


def _gray8(seed=0, shape=(480, 400)):
    return (synthetic_radiograph(*shape, seed=seed) * 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _rle_dicom() -> bytes:
    ds = make_dicom(ramp(400, 300))
    ds.compress(RLELossless)
    return dicom_bytes(ds)


def _exif_rotated() -> bytes:
    image = Image.fromarray(_gray8())
    exif = image.getexif()
    exif[0x0112] = 8
    return _encode(image, "JPEG", exif=exif.tobytes())


def _palette_transparent() -> bytes:
    image = Image.fromarray(_gray8()).convert("P")
    return _encode(image, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_gray8(seed=s)) for s in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def build_corpus() -> dict[str, tuple[str, bytes]]:
    jpeg = _encode(Image.fromarray(_gray8()), "JPEG", quality=90)
    png = png_bytes(_gray8())
    rng = np.random.default_rng(7)
    return {
        "empty file": ("empty.png", b""),
        "random bytes": ("random.jpg", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "text renamed .png": ("notes.png", b"Patient notes, definitely not an image.\n" * 20),
        "truncated JPEG": ("cut.jpg", jpeg[: len(jpeg) * 2 // 3]),
        "truncated PNG": ("cut.png", png[: len(png) // 2]),
        "decompression bomb 30000x30000 PNG": ("bomb.png", huge_png(30_000, 30_000)),
        "1 x 5000 image": ("line.png", png_bytes(np.full((1, 5000), 128, np.uint8))),
        "8 x 8 image": ("tiny.png", png_bytes(np.full((8, 8), 128, np.uint8))),
        "16-bit PNG": ("deep.png", png_bytes((synthetic_radiograph() * 65535).astype(np.uint16))),
        "CMYK JPEG": ("cmyk.jpg", _encode(Image.fromarray(np.repeat(_gray8()[..., None], 3, -1)).convert("CMYK"),
                                          "JPEG")),
        "palette PNG with transparency": ("palette.png", _palette_transparent()),
        "animated GIF": ("anim.gif", _animated_gif()),
        "EXIF-rotated JPEG": ("rotated.jpg", _exif_rotated()),
        "WebP": ("x.webp", _encode(Image.fromarray(_gray8()), "WEBP")),
        "TIFF": ("x.tiff", _encode(Image.fromarray(_gray8()), "TIFF")),
        "BMP": ("x.bmp", _encode(Image.fromarray(_gray8()), "BMP")),
        "DICOM without pixel data": ("nopixels.dcm", dicom_bytes(make_dicom(None))),
        "DICOM MONOCHROME1": ("mono1.dcm", dicom_bytes(make_dicom(ramp(400, 300), photometric="MONOCHROME1"))),
        "RLE-compressed DICOM (decoder available)": ("rle.dcm", _rle_dicom()),
        "JPEG-LS DICOM (no decoder)": ("jpegls.dcm", dicom_bytes(make_dicom(
            ramp(400, 300), transfer_syntax=JPEGLSLossless, encapsulated=encapsulated_garbage()))),
        "RGB DICOM": ("rgb.dcm", dicom_bytes(make_dicom(
            np.repeat(ramp(400, 300, high=255).astype(np.uint8)[..., None], 3, -1), bits_stored=8,
            photometric="RGB"))),
        "multi-frame DICOM": ("frames.dcm", dicom_bytes(make_dicom(np.stack([ramp(400, 300)] * 3), frames=3))),
        "valid X-ray named .txt": ("xray.txt", png),
    }


EXPECT = {
    "empty file": "message", "random bytes": "message", "text renamed .png": "message",
    "truncated JPEG": "verdict", "truncated PNG": "verdict",
    "decompression bomb 30000x30000 PNG": "message", "1 x 5000 image": "message", "8 x 8 image": "message",
    "16-bit PNG": "verdict", "CMYK JPEG": "verdict", "palette PNG with transparency": "verdict",
    "animated GIF": "verdict", "EXIF-rotated JPEG": "verdict", "WebP": "verdict", "TIFF": "verdict",
    "BMP": "verdict", "DICOM without pixel data": "message", "DICOM MONOCHROME1": "verdict",
    "RLE-compressed DICOM (decoder available)": "verdict", "JPEG-LS DICOM (no decoder)": "message",
    "RGB DICOM": "verdict", "multi-frame DICOM": "verdict", "valid X-ray named .txt": "verdict",
}
