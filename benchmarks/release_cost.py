"""What ``timm-sknet release`` costs, step by step: measured on this machine, and estimated from those measurements and
the model's multiply-adds for a GPU machine, until a release there measures it.

    python -m benchmarks.release_cost                                  # sknet50.caffe_in1k
    python -m benchmarks.release_cost --model sknet101.caffe_in1k --workers 16 --gpu-tflops 60

Measured here: converting a release-format caffemodel with the OpenCV verify (what step 1 does), and per image,
decoding and hashing a JPEG of ImageNet val's typical size (500 x 375; the check before the evaluation), decoding it
and applying each protocol's eval transform (what the loader's workers do in each evaluation pass), and the model's
forward pass on the CPU. Scaled to the 50,000 images of ImageNet-1k val, that is the CPU time of each step here.

Estimated for a GPU machine: the loader's work spread over ``--workers`` processes at this machine's per-core rate,
the forward passes at ``--gpu-tflops`` effective (an assumption, the one number here not measured: TF32 convolutions
on an H100 reach a fraction of its dense peak, less for the grouped 3x3s of SK units); the two overlap (the workers
decode while the GPU computes), so a pass costs the longer of them. Uploading and reading back 110 MB (SKNet-50)
depends on the network and is not estimated.
"""
import argparse
import hashlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.flop_counter import FlopCounterMode

from hub_cards.results import IMAGENET_1K_VAL
from hub_cards.validate import validation_protocols
from timm_sknet.io.synthetic import synthetic_images

SAMPLE_IMAGES = 24


def per_item(work: Callable[[], None], count: int, repeats: int = 3, threads: int = 0) -> float:
    """Seconds per item of ``work`` (which does ``count`` items), the median of ``repeats`` timings; with
    ``threads``, torch runs on that many (a loader worker is one process on one core)."""
    if threads:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return per_item(work, count, repeats)
        finally:
            torch.set_num_threads(saved)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) / count)
    return statistics.median(times)


IMAGENET_VAL_JPEG_BYTES = 128_000  # 6.4 GB over 50,000 files: what decoding a real one costs depends on it


def sample_jpegs(count: int) -> List[bytes]:
    """JPEGs of ImageNet val's typical size (500 x 375) and file size: generated pictures with noise for texture, as
    much as brings their mean size to ImageNet val's (a smooth picture compresses, and decodes, several times faster)."""
    rng = np.random.default_rng(0)
    pictures = [np.asarray(image.crop((0, 62, 500, 437)), dtype=np.float64)
                for image in synthetic_images(count, 500, seed=3)]
    for sigma in range(0, 64, 2):
        jpegs = []
        for pixels in pictures:
            noisy = (pixels + rng.normal(0, sigma, pixels.shape)).round().clip(0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(noisy).save(buffer, format='JPEG', quality=90)
            jpegs.append(buffer.getvalue())
        if statistics.mean(map(len, jpegs)) >= IMAGENET_VAL_JPEG_BYTES:
            break
    return jpegs


def measure_convert(model_name: str) -> float:
    """Seconds for step 1 on a release-format caffemodel of ``model_name``: convert, verify against OpenCV, write."""
    from converters.caffe.command import convert_caffemodel
    from converters.caffe.demo import release_like_model
    from converters.caffe.writer import write_caffemodel
    from converters.output import safetensors_bytes

    arch = model_name.partition('.')[0]
    with tempfile.TemporaryDirectory() as scratch:
        caffemodel = Path(scratch) / f'{arch}.caffemodel'
        write_caffemodel(release_like_model(arch), caffemodel)
        images = []
        for i, jpeg in enumerate(sample_jpegs(4)):
            images.append(str(Path(scratch) / f'{i}.JPEG'))
            Path(images[-1]).write_bytes(jpeg)
        start = time.perf_counter()
        tensors, metadata = convert_caffemodel(str(caffemodel), arch, None, True, images)
        (Path(scratch) / 'model.safetensors').write_bytes(safetensors_bytes(tensors, metadata))
        return time.perf_counter() - start


def forward_cost(model: torch.nn.Module, size: int) -> Dict[str, float]:
    """Seconds per image of the forward pass here (batch 8), and its multiply-adds."""
    x = torch.randn(8, 3, size, size)
    with torch.inference_mode():
        model(x)  # warm-up
        seconds = per_item(lambda: model(x), len(x))
        with FlopCounterMode(display=False) as counter:
            model(x[:1])
    return {'seconds': seconds, 'gmacs': counter.get_total_flops() / 2e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='sknet50.caffe_in1k', help="the authors' weights' tag (default: %(default)s)")
    parser.add_argument('--workers', type=int, default=16, help='decoding processes on the GPU machine (default: 16)')
    parser.add_argument('--gpu-tflops', type=float, default=60.,
                        help='effective fp32/TF32 TFLOP/s of the forward passes on the GPU (an assumption; default 60)')
    parser.add_argument('--no-convert', action='store_true', help='skip timing step 1 (needs OpenCV)')
    args = parser.parse_args()

    images = IMAGENET_1K_VAL.images
    model = timm.create_model(args.model).eval()
    jpegs = sample_jpegs(SAMPLE_IMAGES)

    def check() -> None:
        for jpeg in jpegs:
            hashlib.sha256(jpeg).hexdigest()
            Image.open(io.BytesIO(jpeg)).convert('RGB')
    rows = [('check the images (decode, sha256)', per_item(check, len(jpegs), threads=1), 0., None)]
    for protocol in validation_protocols(model):
        transform = create_transform(**protocol.data_config(model), is_training=False)

        def load(transform=transform) -> None:
            for jpeg in jpegs:
                transform(Image.open(io.BytesIO(jpeg)).convert('RGB'))
        cost = forward_cost(model, protocol.size)
        rows.append((f'evaluate {protocol.name}', per_item(load, len(jpegs), threads=1), cost['seconds'],
                     cost['gmacs']))

    print(f'{args.model}: what a release of {images:,} validation images costs; measured here on '
          f'{os.cpu_count()} CPU cores (torch threads: {torch.get_num_threads()}) with JPEGs of '
          f'{statistics.mean(map(len, jpegs)) / 1000:.0f} kB on average, estimated for a GPU machine with '
          f'{args.workers} loader workers and {args.gpu_tflops:g} effective TFLOP/s (an assumption)\n')
    print('| step | here, one core: decode + transform | here: forward | GMACs / image | GPU machine (estimate) |')
    print('|---|---|---|---|---|')
    if not args.no_convert:
        convert = measure_convert(args.model)
        print(f'| convert + OpenCV verify on 4 images | {convert:.0f} s in all | | | {convert:.0f} s (on the CPU, '
              'as here) |')
    total = 0.
    for name, load_s, forward_s, gmacs in rows:
        decode = images * load_s / args.workers
        compute = images * gmacs * 2e9 / (args.gpu_tflops * 1e12) if gmacs else 0.
        estimate = max(decode, compute)
        total += estimate
        here_forward = f'{images * forward_s / 3600:.1f} h' if forward_s else ''
        print(f'| {name} | {images * load_s / 60:.1f} min | {here_forward} | {f"{gmacs:.2f}" if gmacs else ""} '
              f'| {estimate:.0f} s ({"decoding" if decode >= compute else "forward"}-bound) |')
    print(f'\nthe images checked and evaluated on the GPU machine, estimated: {total / 60:.1f} min; per core here: '
          + ', '.join(f'{name} {1 / load_s:.0f} img/s' for name, load_s, _, _ in rows))


if __name__ == '__main__':
    main()
