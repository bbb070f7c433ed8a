"""``timm-sknet validate``: top-1 / top-5 of converted weights on ImageNet val, with timm's eval pipeline.

The data are an ImageFolder (``DATA_DIR/<synset>/*.JPEG``, or the same under ``DATA_DIR/val``); each
``--input-size`` is evaluated with the model's pretrained preprocessing (for the released SKNets: bilinear
resize to size / 0.875, centre crop; 224 and the paper's test size 320 by default).
"""
import argparse
import json
import platform
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
from timm.data import create_dataset, create_loader, resolve_data_config
from torch import nn
from tqdm import tqdm

import timm_sknet
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import atomic_output, check_can_write, sha256_file
from timm_sknet.weights.loading import create_model_with_weights

from .results import RESULTS_FORMAT

__all__ = ['HELP', 'configure_parser', 'run']

HELP = 'measure top-1/top-5 of weights on an ImageFolder / ImageNet val'


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('data_dir', metavar='DATA_DIR', type=Path,
                        help='ImageNet val as an ImageFolder: DATA_DIR/<synset>/*.JPEG (or DATA_DIR/val/<synset>/...)')
    parser.add_argument('--model', required=True, help='registered model name, e.g. sknet50')
    parser.add_argument('--weights', required=True, type=Path, metavar='W.safetensors',
                        help='safetensors written by convert-caffe')
    parser.add_argument('--input-size', type=int, nargs='+', metavar='PX',
                        help="square input sizes to evaluate, each with the pretrained crop and interpolation "
                             "(default: the model's input size and test size, 224 320 for the released SKNets)")
    parser.add_argument('--class-map', type=Path, metavar='FILE.txt',
                        help='text file of class folder names, one per line in class-index order; needed when '
                             'DATA_DIR holds a subset of the classes')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=4, help='data loading processes')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--output', '-o', type=Path, metavar='RESULTS.json',
                        help='results JSON (default: ./<model>-results.json)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing results JSON')


def run(args: argparse.Namespace) -> int:
    output = check_can_write(args.output or Path(f'{args.model}-results.json'), args.force)
    if args.class_map is not None and (args.class_map.suffix != '.txt' or not args.class_map.is_file()):
        raise UserError(f'class map {args.class_map} is not an existing .txt file (one class folder name per line)')
    model, _ = create_model_with_weights(args.model, args.weights)
    weights_sha256 = sha256_file(args.weights)
    device = torch.device(args.device)
    model.to(device)
    dataset = _open_dataset(args.data_dir, args.class_map, model.num_classes)
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
            'dir': str(args.data_dir.resolve()), 'image_count': len(dataset), 'num_classes': _num_classes(dataset)},
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
    with torch.inference_mode(), tqdm(total=len(dataset), desc=desc, unit='img') as progress:
        for images, targets in loader:
            logits = model(images.to(device, non_blocking=True))
            hits = logits.topk(top_k, dim=1).indices.cpu() == targets.unsqueeze(1)
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            progress.update(len(targets))
    count = len(dataset)
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


def _open_dataset(data_dir: Path, class_map: Optional[Path], num_classes: int):
    if not data_dir.is_dir():
        raise UserError(f'data directory {data_dir} does not exist; pass ImageNet val in ImageFolder layout')
    dataset = create_dataset('', root=str(data_dir), split='validation', class_map=str(class_map or ''))
    if len(dataset) == 0:
        raise UserError(f'{data_dir} holds no images; expected DATA_DIR/<class>/<image> (or under DATA_DIR/val)')
    found = _num_classes(dataset)
    if class_map is None and found != num_classes:
        raise UserError(
            f'{data_dir} has {found} class folders but the model predicts {num_classes} classes; '
            'pass --class-map to map folder names to class indices')
    return dataset


def _num_classes(dataset) -> int:
    return len(dataset.reader.class_to_idx)


def _command_line(args: argparse.Namespace, sizes: List[int], output: Path) -> str:
    """The command that reproduces these results, defaults spelled out."""
    words = ['timm-sknet', 'validate', '--model', args.model, '--weights', str(args.weights),
             '--input-size', *map(str, sizes)]
    if args.class_map is not None:
        words += ['--class-map', str(args.class_map)]
    words += ['--batch-size', str(args.batch_size), '--workers', str(args.workers), '--device', args.device,
              '--output', str(output), str(args.data_dir)]
    return shlex.join(words)
