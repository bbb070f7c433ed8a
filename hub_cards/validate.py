"""``timm-sknet validate``: top-1 / top-5 of converted weights on ImageNet val, with timm's eval pipeline.

The data are an ImageFolder (``DATA_DIR/<synset>/*.JPEG``, or the same under ``DATA_DIR/val``); each
``--input-size`` is evaluated with the model's pretrained preprocessing (for the released SKNets: bilinear
resize to size / 0.875, centre crop; 224 and the paper's test size 320 by default).

Only images that decode count. Every image is decoded once before the evaluation; an unreadable one stops the run
before anything is written, unless ``--skip-unreadable`` leaves it out and names it in the results (which
``publish`` then refuses). During the evaluation a file that no longer decodes stops the run too: timm's own
dataset would replace it by the next image ("Skipped sample"), which would count that image twice.
"""
import argparse
import json
import multiprocessing
import platform
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import timm
import torch
from PIL import Image
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.data.readers.img_extensions import get_img_extensions
from torch import nn
from tqdm import tqdm

import timm_sknet
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import atomic_output, check_can_write, sha256_file
from timm_sknet.weights.loading import create_model_with_weights

from .results import RESULTS_FORMAT

__all__ = ['DecodedImages', 'UnreadableImageError', 'evaluate', 'run']


def run(args: argparse.Namespace) -> int:
    output = check_can_write(args.output or Path(f'{args.model}-results.json'), args.force)
    if args.class_map is not None and (args.class_map.suffix != '.txt' or not args.class_map.is_file()):
        raise UserError(f'class map {args.class_map} is not an existing .txt file (one class folder name per line)')
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = _available_device(args.device)
    found = _find_images(args.data_dir, args.class_map)
    model, _ = create_model_with_weights(args.model, args.weights)
    weights_sha256 = sha256_file(args.weights)
    if args.class_map is None and len(found.class_to_idx) != model.num_classes:
        raise UserError(
            f'{args.data_dir} has {len(found.class_to_idx)} class folders but the model predicts {model.num_classes} '
            'classes; pass --class-map to map folder names to class indices')
    model.to(device)
    samples, skipped = _decoded_samples(found, args.data_dir, args.skip_unreadable, args.workers)
    dataset = DecodedImages(samples)
    sizes = args.input_size or _default_sizes(model)
    evaluations = []
    for size in sizes:
        data_config = _data_config(model, size)
        evaluation = evaluate(
            model, dataset, data_config, args.batch_size, args.workers, device, desc=f'{args.model} @ {size} px')
        print(
            f"{args.model} @ {size} px (crop {data_config['crop_pct']}, {data_config['interpolation']}): "
            f"top-1 {evaluation['top1']:.3f}%, top-5 {evaluation['top5']:.3f}% on {evaluation['image_count']} images")
        evaluations.append(evaluation)
    results = {
        'format': RESULTS_FORMAT,
        'model': args.model,
        'weights': {'file': args.weights.name, 'size': args.weights.stat().st_size, 'sha256': weights_sha256},
        'data': {
            'dir': str(args.data_dir.resolve()), 'image_count': len(dataset), 'num_classes': len(found.class_to_idx),
            'skipped': skipped,
        },
        'evaluations': evaluations,
        'device': str(device),
        'command': _command_line(args, sizes, output),
        'versions': {
            'timm_sknet': timm_sknet.__version__, 'timm': timm.__version__, 'torch': torch.__version__,
            'python': platform.python_version(),
        },
    }
    with atomic_output(output, args.force) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + '\n', encoding='utf-8')
    print(f'wrote {output}')
    return 0


def evaluate(
        model: nn.Module,
        dataset: torch.utils.data.Dataset,
        data_config: Dict[str, Any],
        batch_size: int = 64,
        workers: int = 4,
        device: torch.device = torch.device('cpu'),
        desc: str = 'validate',
) -> Dict[str, Any]:
    """Top-1 / top-5 of ``model`` over ``dataset`` preprocessed by timm's eval transform for ``data_config``."""
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=batch_size, use_prefetcher=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'], num_workers=workers,
        persistent_workers=False, pin_memory=device.type == 'cuda', device=device)
    top_k = min(5, model.num_classes)
    correct1 = correct5 = 0
    count = 0  # the images evaluated, each one decoded
    with torch.inference_mode(), tqdm(total=len(dataset), desc=desc, unit='img', disable=None) as progress:
        try:
            for images, targets in loader:
                logits = model(images.to(device, non_blocking=True))
                hits = logits.topk(top_k, dim=1).indices.cpu() == targets.unsqueeze(1)
                correct1 += int(hits[:, 0].sum())
                correct5 += int(hits.any(dim=1).sum())
                count += len(targets)
                progress.update(len(targets))
        except UnreadableImageError as e:
            # from a loader worker the message comes wrapped in the worker's traceback, ours on its last line
            message = str(e).strip().splitlines()[-1].split(f'{UnreadableImageError.__name__}: ', 1)[-1]
            raise UserError(f'{message} (it decoded before the run began: did it change during the run?); '
                            'nothing was written') from None
    return {
        'input_size': list(data_config['input_size']),
        'crop_pct': data_config['crop_pct'],
        'crop_mode': data_config['crop_mode'],
        'interpolation': data_config['interpolation'],
        'mean': list(data_config['mean']),
        'std': list(data_config['std']),
        'image_count': count,
        'top1_correct': correct1,
        'top5_correct': correct5,
        'top1': 100 * correct1 / count,
        'top5': 100 * correct5 / count,
    }


def _default_sizes(model: nn.Module) -> List[int]:
    cfg = model.pretrained_cfg
    sizes = [cfg['input_size'][-1]]
    if cfg.get('test_input_size') and cfg['test_input_size'][-1] not in sizes:
        sizes.append(cfg['test_input_size'][-1])
    return sizes


def _data_config(model: nn.Module, size: int) -> Dict[str, Any]:
    """The pretrained eval preprocessing at ``size``; the test size takes the cfg's test crop."""
    test_size = model.pretrained_cfg.get('test_input_size')
    use_test_size = bool(test_size) and test_size[-1] == size
    return resolve_data_config({'input_size': (3, size, size)}, model=model, use_test_size=use_test_size)


def _available_device(name: str) -> torch.device:
    """``name`` as a device this machine has, said in one line before any work when it has not."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # torch says "not compiled with CUDA" by an AssertionError
        cuda = f'cuda (on {torch.cuda.device_count()} GPUs)' if torch.cuda.is_available() else 'no cuda'
        raise UserError(f'--device {name} is not available on this machine ({str(e).strip().splitlines()[0]}; it '
                        f'has cpu and {cuda}); pass --device cpu') from None
    return device


class FoundImages(NamedTuple):
    root: Path  # DATA_DIR, or DATA_DIR/val when it has one
    samples: List[Tuple[str, int]]  # (image file, class index)
    class_to_idx: Dict[str, int]


def _find_images(data_dir: Path, class_map: Optional[Path]) -> FoundImages:
    """The ImageFolder's images and classes as timm finds them; refuses a layout whose count would mislead."""
    layout = 'expected DATA_DIR/<class>/<image> (or DATA_DIR/val/<class>/<image>)'
    if not data_dir.is_dir():
        raise UserError(f'data directory {data_dir} does not exist; pass ImageNet val in ImageFolder layout')
    extensions = ', '.join(get_img_extensions())
    try:
        reader = create_dataset('', root=str(data_dir), split='validation', class_map=str(class_map or '')).reader
    except RuntimeError:  # timm's "Found 0 images in subfolders of ..."
        others = sum(1 for p in data_dir.rglob('*') if p.is_file())
        holds = f'only {others} other files' if others else 'nothing'
        raise UserError(f'{data_dir} holds no images ({extensions}), {holds}; {layout}') from None
    root = Path(reader.root)
    if '' in reader.class_to_idx:
        loose = sum(1 for _, target in reader.samples if target == reader.class_to_idx[''])
        raise UserError(f'{root} holds {loose} images outside class folders (their class is unknown); {layout}')
    empty = sorted(p.name for p in root.iterdir() if p.is_dir() and not _holds_images(p))
    if empty:
        raise UserError(
            f'{len(empty)} class folders of {root} hold no images ({extensions}), e.g. {empty[0]}; put that '
            "class's images there, or remove the folder and pass --class-map")
    return FoundImages(root, list(reader.samples), dict(reader.class_to_idx))


def _holds_images(folder: Path) -> bool:
    extensions = get_img_extensions()
    return any(p.suffix.lower() in extensions and p.is_file() for p in folder.rglob('*'))


def _decode_error(path: str) -> str:
    """Why ``path`` does not decode to an RGB image; empty when it does."""
    try:
        with Image.open(path) as image:
            image.convert('RGB')
    except Exception as e:  # noqa: BLE001  (PIL's decoders raise OSError, SyntaxError, ValueError and others)
        return f'{type(e).__name__}: {e}'
    return ''


def _decoded_samples(
        found: FoundImages, data_dir: Path, skip_unreadable: bool, workers: int,
) -> Tuple[List[Tuple[str, int]], List[Dict[str, str]]]:
    """Decode every image once (in ``workers`` processes); return the samples that decode and the skipped files
    (relative to ``data_dir``, with the reason). Without ``skip_unreadable`` an unreadable image stops the run."""
    paths = [path for path, _ in found.samples]
    progress = dict(total=len(paths), desc='decoding every image', unit='img', disable=None)  # a bar on a tty only
    if workers > 0:
        with multiprocessing.Pool(workers) as pool:
            errors = list(tqdm(pool.imap(_decode_error, paths, chunksize=32), **progress))
    else:
        errors = [_decode_error(path) for path in tqdm(paths, **progress)]
    unreadable = [(path, error) for path, error in zip(paths, errors) if error]
    if unreadable and not skip_unreadable:
        path, error = unreadable[0]
        raise UserError(
            f'{len(unreadable)} of {len(paths)} images do not decode, the first {path} ({error}); replace them, or '
            'pass --skip-unreadable to leave them out (results that skip images cannot be published)')
    if len(unreadable) == len(paths):
        raise UserError(f'none of the {len(paths)} images in {found.root} decodes; pass readable images')
    skipped = [{'file': str(Path(path).relative_to(data_dir)), 'error': error} for path, error in unreadable]
    return [sample for sample, error in zip(found.samples, errors) if not error], skipped


class UnreadableImageError(Exception):
    """An image that decoded before the run and does not now (one string argument, so a loader worker can
    re-raise it)."""


class DecodedImages(torch.utils.data.Dataset):
    """(image, class index) per sample, as timm's ImageDataset, except that an image that does not decode raises
    ``UnreadableImageError`` instead of being replaced by the next one. ``create_loader`` sets ``transform``."""

    def __init__(self, samples: List[Tuple[str, int]], transform: Optional[Callable] = None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert('RGB')
        except Exception as e:  # noqa: BLE001  (as _decode_error)
            raise UnreadableImageError(f'{path} does not decode ({type(e).__name__}: {e})') from None
        return (self.transform(image) if self.transform is not None else image), target


def _command_line(args: argparse.Namespace, sizes: List[int], output: Path) -> str:
    """The command that reproduces these results, defaults spelled out."""
    words = ['timm-sknet', 'validate', '--model', args.model, '--weights', str(args.weights),
             '--input-size', ','.join(map(str, sizes))]
    if args.class_map is not None:
        words += ['--class-map', str(args.class_map)]
    words += ['--batch-size', str(args.batch_size), '--workers', str(args.workers), '--device', args.device]
    if args.skip_unreadable:
        words.append('--skip-unreadable')
    words += ['--output', str(output), str(args.data_dir)]
    return shlex.join(words)
