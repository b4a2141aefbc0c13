"""Make the grayscale JPEGs the seed's convolution example reads (it read them
from its author's disk): ``python examples/make_images.py FOLDER [COUNT] [SIZE]``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int = 200, size: int = 32) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2020)
    for i in range(1, count + 1):
        pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.jpg")


if __name__ == "__main__":
    make_images(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:4]))
