"""Decoding benchmark: which decoder is fastest for each format, and what one film costs
from bytes to model input, before and after reduced-size decoding. Three runs, median and
spread, every figure from the same run.

Usage: python -m benchmarks.decode [--films 24] [--runs 3]

Films: `fixtures.films.textured_radiograph` at 2,000 x 2,500 (it compresses like a real
film), as JPEG (quality 92), 8-bit PNG, 16-bit PNG and JPEG 2000 (12-bit, lossless, the
codec inside compressed DICOM). Per format, the decoders that could serve it:
- JPEG: Pillow at full size (shipped); Pillow's draft (DCT-scaled decoding); OpenCV at full
  size and with IMREAD_REDUCED_GRAYSCALE_2;
- PNG: Pillow (shipped) and OpenCV (lossless: the same pixels; about as fast, so not used);
- JPEG 2000: pylibjpeg-openjpeg, which has no reduced-resolution decode.
Then `decode + preprocess` (bytes -> uint8 model input) for a JPEG: the path before
(`training.release.decode_equivalence.REFERENCE`), the shipped one and reduced-size decoding
(which failed the decoding equivalence check, so it is not shipped), with each step of the
shipped path timed on its own.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import cv2
import numpy as np
import openjpeg
from PIL import Image

from fixtures.films import jpeg_bytes, png_bytes, textured_radiograph
from training.release.decode_equivalence import REFERENCE, reduced_decode
from utils.core import preprocess as steps
from utils.core.classifier import Preparation, prepare_input
from utils.core.decode import decode_image_bytes
from utils.core.guard import screen_decoded

HEIGHT, WIDTH = 2500, 2000


def films(count: int) -> dict[str, list[bytes]]:
    arrays = [textured_radiograph(HEIGHT, WIDTH, seed=i) for i in range(count)]
    return {
        "jpeg": [jpeg_bytes(a) for a in arrays],
        "png8": [png_bytes(np.round(a * 255).astype(np.uint8)) for a in arrays],
        "png16": [png_bytes(np.round(a * 4095).astype(np.uint16)) for a in arrays[: max(2, count // 4)]],
        "j2k": [openjpeg.encode(np.round(a * 4095).astype(np.uint16), bits_stored=12) for a in arrays[:2]],
    }


def pillow_load(data: bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if draft is not None:
        image.draft(image.mode, draft)
    image.load()
    return image


def opencv(flag: int) -> Callable[[bytes], np.ndarray]:
    def decode(data: bytes) -> np.ndarray:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if pixels is None:
            raise ValueError("OpenCV could not decode the image")
        return pixels

    return decode


def median_ms(function: Callable[[bytes], object], inputs: list[bytes]) -> float:
    times = []
    for data in inputs:
        start = time.perf_counter()
        function(data)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def shipped_steps(data: bytes) -> dict[str, float]:
    """Milliseconds of each step of the shipped path for one film."""
    marks = [time.perf_counter()]
    decoded = steps.decode_for_model(data)
    marks.append(time.perf_counter())
    pixels = steps.limit_size(decoded.pixels)
    marks.append(time.perf_counter())
    pixels = pixels[steps.uniform_border(pixels)]
    marks.append(time.perf_counter())
    pixels = steps.stretch_contrast(pixels)
    marks.append(time.perf_counter())
    np.round(steps.letterbox_resize(pixels, steps.INPUT_SIZE) * 255.0).astype(np.uint8)
    marks.append(time.perf_counter())
    screen_decoded(decoded.pixels, decoded.colour_fraction)
    marks.append(time.perf_counter())
    names = ("decode", "limit size", "border crop", "contrast stretch", "letterbox + resize", "pixel screen")
    return {name: (b - a) * 1e3 for name, a, b in zip(names, marks, marks[1:])}


def one_run(inputs: dict[str, list[bytes]]) -> dict[str, float]:
    jpeg = inputs["jpeg"]
    draft = (round(WIDTH * 1024 / HEIGHT) + 1, 1024)
    figures = {
        "jpeg: Pillow, full size (shipped)": median_ms(pillow_load, jpeg),
        "jpeg: Pillow draft": median_ms(lambda d: pillow_load(d, draft), jpeg),
        "jpeg: OpenCV, full size": median_ms(opencv(cv2.IMREAD_GRAYSCALE), jpeg),
        "jpeg: OpenCV IMREAD_REDUCED_GRAYSCALE_2": median_ms(opencv(cv2.IMREAD_REDUCED_GRAYSCALE_2), jpeg),
        "png8: Pillow (shipped)": median_ms(pillow_load, inputs["png8"]),
        "png8: OpenCV": median_ms(opencv(cv2.IMREAD_UNCHANGED), inputs["png8"]),
        "png16: Pillow (shipped)": median_ms(pillow_load, inputs["png16"]),
        "png16: OpenCV": median_ms(opencv(cv2.IMREAD_UNCHANGED), inputs["png16"]),
        "j2k: pylibjpeg-openjpeg (shipped)": median_ms(openjpeg.decode, inputs["j2k"]),
        "png8: decode_image_bytes": median_ms(decode_image_bytes, inputs["png8"]),
    }
    size = steps.INPUT_SIZE
    reduced = Preparation(decode=reduced_decode)
    figures["jpeg: bytes -> model input, before"] = median_ms(
        lambda d: prepare_input("f", d, size, how=REFERENCE), jpeg
    )
    figures["jpeg: bytes -> model input, shipped"] = median_ms(lambda d: prepare_input("f", d, size), jpeg)
    figures["jpeg: bytes -> model input, reduced decoding"] = median_ms(
        lambda d: prepare_input("f", d, size, how=reduced), jpeg
    )
    per_step = [shipped_steps(d) for d in jpeg]
    for name in per_step[0]:
        figures[f"shipped step: {name}"] = float(np.median([s[name] for s in per_step]))
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    inputs = films(args.films)
    one_run({k: v[:2] for k, v in inputs.items()})  # warm-up: libraries, caches
    runs = [one_run(inputs) for _ in range(args.runs)]
    summary = {name: [r[name] for r in runs] for name in runs[0]}
    print(f"{args.films} films of {WIDTH} x {HEIGHT}, {args.runs} runs: median ms per film (min-max over runs)")
    for name, values in summary.items():
        print(f"{name:45s} {np.median(values):8.1f}  ({min(values):.1f}-{max(values):.1f})")
    before = np.median(summary["jpeg: bytes -> model input, before"])
    after = np.median(summary["jpeg: bytes -> model input, shipped"])
    reduced = np.median(summary["jpeg: bytes -> model input, reduced decoding"])
    print(
        f"bytes -> model input, 5-megapixel JPEG: {before:.1f} -> {after:.1f} ms shipped ({before / after:.2f}x), "
        f"{reduced:.1f} ms with reduced decoding ({before / reduced:.2f}x; not shipped); target <= 12 ms"
    )
    sizes = {k: int(np.median([len(d) for d in v]) // 1024) for k, v in inputs.items()}
    print(json.dumps({"file_kB": sizes, "median_ms": {k: round(float(np.median(v)), 2) for k, v in summary.items()}}))
    return summary


if __name__ == "__main__":
    main()
