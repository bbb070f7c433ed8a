"""Generated pictures for checks that need images but no dataset (``convert-caffe --verify``, ``timm-sknet
attention --synthetic``, the demo): numpy and PIL only, so the torch-free tools can use them too."""
from typing import List

import numpy as np
from PIL import Image

__all__ = ['synthetic_images']


def synthetic_images(count: int, size: int = 320, seed: int = 0) -> List[Image.Image]:
    """Reproducible test pictures: a striped ellipse (the "object") centred on a smooth coloured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        background = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
        radius_x, radius_y = rng.uniform(0.12, 0.25, 2)
        cx, cy = rng.uniform(-0.05, 0.05, 2)
        r = np.sqrt(((xx - cx) / radius_x) ** 2 + ((yy - cy) / radius_y) ** 2)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 8) * r)
        colour = rng.uniform(0, 255, 3)
        inside = (r <= 1)[..., None]
        pixels = np.where(inside, stripes[..., None] * colour, background)
        images.append(Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)))
    return images

