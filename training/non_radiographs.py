"""Clearly-not-a-radiograph images, made on the spot (no download), to measure the guard.

Four kinds, in equal shares, each encoded as PNG or JPEG bytes like an upload:
- photo: crops of scikit-image's bundled photographs (colour and grey), with colour jitter;
- texture: synthetic noise, gradients, stripes, checkerboards, blobs, in colour or grey;
- document: pages of text, tables and forms drawn with Pillow;
- flat: near-uniform images (blank scans, solid colours with a little noise).
scikit-image's Shepp-Logan phantom is left out: it imitates a CT slice.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFont
from skimage.data import binary_blobs

SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "colorwheel",
    "logo",
    "camera",
    "moon",
    "coins",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
    "horse",
    "clock",
    "cell",
    "checkerboard",
)
KINDS = ("photo", "texture", "document", "flat")
WORDS = (
    "invoice total amount date name address phone order item quantity price tax receipt "
    "meeting agenda notes project report summary figure table results method page"
).split()


def encode(array: np.ndarray, rng: np.random.Generator) -> bytes:
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    if rng.random() < 0.5:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buffer, format="JPEG", quality=int(rng.integers(70, 96))
        )
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image / max(float(image.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return image
    return image[..., :3]


def photo(rng: np.random.Generator) -> np.ndarray:
    source = _to_uint8_rgb(getattr(skimage.data, SKIMAGE_PHOTOS[rng.integers(len(SKIMAGE_PHOTOS))])())
    height, width = source.shape[:2]
    crop_h = int(height * rng.uniform(0.5, 1.0))
    crop_w = int(width * rng.uniform(0.5, 1.0))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    crop: np.ndarray = source[top : top + crop_h, left : left + crop_w].astype(np.float32)
    if crop.ndim == 3:  # colour jitter: per-channel gain and a brightness shift
        crop = crop * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-20, 20)
    else:
        crop = crop * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(crop, 0, 255).astype(np.uint8)


def texture(rng: np.random.Generator) -> np.ndarray:
    height, width = int(rng.integers(200, 700)), int(rng.integers(200, 700))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(5)
    if kind == 0:  # smoothed noise
        field = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), rng.uniform(1, 8))
    elif kind == 1:  # linear gradient
        angle = rng.uniform(0, np.pi)
        field = np.cos(angle) * x + np.sin(angle) * y
    elif kind == 2:  # stripes
        field = np.sin((x * np.cos(rng.uniform(0, np.pi)) + y) / rng.uniform(3, 30))
    elif kind == 3:  # checkerboard
        cell = int(rng.integers(8, 60))
        field = ((x // cell + y // cell) % 2).astype(np.float32)
    else:  # blobs
        side = max(height, width)
        field = binary_blobs(length=side, blob_size_fraction=rng.uniform(0.05, 0.2), rng=int(rng.integers(1 << 30)))[
            :height, :width
        ].astype(np.float32)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    if rng.random() < 0.5:
        low, high = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
        rgb = low + field[..., None] * (high - low)
        return np.clip(rgb, 0, 255).astype(np.uint8)
    return (field * 255).astype(np.uint8)


def document(rng: np.random.Generator) -> np.ndarray:
    width, height = int(rng.integers(400, 900)), int(rng.integers(500, 1100))
    paper = int(rng.integers(225, 256))
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(rng.integers(12, 28)))
    y = int(rng.integers(10, 60))
    while y < height - 30:
        if rng.random() < 0.15:  # a table row or form field
            draw.rectangle([20, y, width - 20, y + 24], outline=int(rng.integers(0, 80)))
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 10))))
        draw.text((int(rng.integers(15, 60)), y), words, fill=int(rng.integers(0, 90)), font=font)
        y += int(rng.integers(22, 48))
    array = np.asarray(image)
    if rng.random() < 0.3:  # tinted paper
        tint = rng.uniform(0.85, 1.0, size=3)
        return (array[..., None] * tint).astype(np.uint8)
    return array


def flat(rng: np.random.Generator) -> np.ndarray:
    height, width = int(rng.integers(100, 600)), int(rng.integers(100, 600))
    level = rng.integers(0, 256, size=3 if rng.random() < 0.5 else 1)
    noise = rng.normal(0, rng.uniform(0, 2), size=(height, width, len(level)))
    array = np.clip(level + noise, 0, 255).astype(np.uint8)
    return array[..., 0] if array.shape[-1] == 1 else array


def drawing(rng: np.random.Generator) -> np.ndarray:
    """Line art on paper: shapes, arrows and scribbles, as in a sketch or a diagram."""
    width, height = int(rng.integers(300, 900)), int(rng.integers(300, 900))
    image = Image.new("L", (width, height), int(rng.integers(220, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 25))):
        box = sorted(rng.integers(0, width, 2).tolist()), sorted(rng.integers(0, height, 2).tolist())
        shape = [box[0][0], box[1][0], box[0][1], box[1][1]]
        ink, line = int(rng.integers(0, 100)), int(rng.integers(1, 6))
        choice = rng.integers(3)
        if choice == 0:
            draw.ellipse(shape, outline=ink, width=line)
        elif choice == 1:
            draw.rectangle(shape, outline=ink, width=line)
        else:
            draw.line(
                [tuple(p) for p in rng.integers(0, min(width, height), (int(rng.integers(2, 8)), 2))],
                fill=ink,
                width=line,
            )
    return np.asarray(image)


def screenshot(rng: np.random.Generator) -> np.ndarray:
    """A desktop or web page: title bar, panels, buttons and text, in grey or colour."""
    width, height = int(rng.integers(640, 1280)), int(rng.integers(400, 900))
    colour = rng.random() < 0.6
    mode, background = (
        ("RGB", tuple(int(v) for v in rng.integers(200, 256, 3))) if colour else ("L", int(rng.integers(200, 256)))
    )
    image = Image.new(mode, (width, height), background)
    draw = ImageDraw.Draw(image)

    def paint(low, high):
        return tuple(int(v) for v in rng.integers(low, high, 3)) if colour else int(rng.integers(low, high))

    draw.rectangle([0, 0, width, int(rng.integers(24, 60))], fill=paint(20, 120))
    font = ImageFont.load_default(size=int(rng.integers(11, 18)))
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, width - 120)), int(rng.integers(60, height - 40))
        draw.rectangle(
            [x0, y0, x0 + int(rng.integers(60, 300)), y0 + int(rng.integers(20, 120))],
            fill=paint(150, 256),
            outline=paint(0, 120),
        )
        draw.text((x0 + 6, y0 + 4), " ".join(rng.choice(WORDS, size=3)), fill=paint(0, 80), font=font)
    return np.asarray(image)


def ct_like(rng: np.random.Generator) -> np.ndarray:
    """A cross-section in the style of a CT or MRI slice: a round field of view on black, a
    bright rim, soft-tissue blobs and noise (not a projection radiograph)."""
    side = int(rng.integers(256, 640))
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
    rx, ry = rng.uniform(0.3, 0.45), rng.uniform(0.25, 0.42)
    body = (x / rx) ** 2 + (y / ry) ** 2
    image = np.where(body < 1, 0.35, 0.0) + np.where((body < 1) & (body > 0.85), 0.5, 0.0)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy, r = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2), rng.uniform(0.03, 0.12)
        image += np.where((x - cx) ** 2 + (y - cy) ** 2 < r**2, rng.uniform(-0.2, 0.5), 0.0)
    image += rng.normal(0, rng.uniform(0.01, 0.05), image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


MAKERS = {
    "photo": photo,
    "texture": texture,
    "document": document,
    "flat": flat,
    "drawing": drawing,
    "screenshot": screenshot,
    "ct_like": ct_like,
}
# Kinds the radiograph guard also learns from (the four KINDS are the measured set of old).
EXTRA_KINDS = ("drawing", "screenshot", "ct_like")


def make_non_radiographs(count: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, str, bytes]]:
    """(name, kind, encoded bytes) for `count` images, the kinds taking turns."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        out.append((f"{kind}_{i:04d}", kind, encode(MAKERS[kind](rng), rng)))
    return out
