"""``timm-sknet validate``: top-1 / top-5 of converted weights on ImageNet val, exactly as timm's validate.py counts them.

The data are an ImageFolder (``DATA_DIR/<synset>/*.JPEG``, or the same under ``DATA_DIR/val``), numbered by the
sorted class folders or by ``--class-map`` (``data.py``). Each number comes from one preprocessing protocol
(``protocols.py``): the model's pretrained preprocessing at each ``--input-size``, and for the authors' weights both
320 px conventions. The pipeline is validate.py's with its defaults: ``create_loader`` with the prefetcher (uint8
batches normalised on the device), float32 (TF32 matmuls and cuDNN autotuning on CUDA, as validate.py sets them),
so its top-1 is the one ``validate.py --img-size S --crop-pct P`` reports.

Only images that decode count, each checked by its sha256 as it is loaded (``data.py``).
"""
import argparse
import json
import platform
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
from timm.data import create_loader
from torch import nn

import timm_sknet
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import atomic_output, check_can_write, printable_name, sha256_file
from timm_sknet.weights.loading import create_model_with_weights
from timm_sknet.weights.release import AUTHORS_WEIGHTS

from .data import CheckedImages, DecodedImages, FoundImages, UnreadableImageError, check_images, find_images, \
    read_class_map
from .progress import Progress
from .protocols import BOTH_CROPS_SIZE, Protocol, protocols
from .results import RESULTS_FORMAT

__all__ = ['evaluate', 'measure', 'results_record', 'run', 'validation_protocols']


def run(args: argparse.Namespace) -> int:
    output = check_can_write(args.output or Path(f'{args.model}-results.json'), args.force)
    class_names = read_class_map(args.class_map) if args.class_map is not None else None
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = available_device(args.device)
    model, _ = create_model_with_weights(args.model, args.weights)
    found = find_images(args.data_dir, model.num_classes, class_names, str(args.class_map))
    chosen = validation_protocols(model, args.input_size)
    checked = check_images(found, args.data_dir, args.skip_unreadable, args.workers)
    evaluations = measure(model, checked, chosen, args.batch_size, args.workers, device, args.model)
    results = results_record(args.model, args.weights, sha256_file(args.weights), args.data_dir, found, checked,
                             evaluations, device, _command_line(args, chosen, output))
    with atomic_output(output, args.force) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + '\n', encoding='utf-8')
    print(f'wrote {output}')
    return 0


def _name_tag(model: nn.Module) -> str:
    cfg = model.pretrained_cfg
    return f"{cfg['architecture']}.{cfg['tag']}" if cfg.get('tag') else cfg['architecture']


def validation_protocols(model: nn.Module, sizes: Optional[List[int]] = None) -> List[Protocol]:
    """What validate measures: at ``sizes`` (default: the input and test sizes, 224 and 320 for the authors'
    weights) the pretrained preprocessing, and for the authors' weights both 320 px conventions."""
    authors = _name_tag(model) in AUTHORS_WEIGHTS
    if not sizes:
        cfg = model.pretrained_cfg
        sizes = [cfg['input_size'][-1]]
        test_size = (cfg.get('test_input_size') or [None])[-1] or (BOTH_CROPS_SIZE if authors else None)
        if test_size and test_size not in sizes:
            sizes.append(test_size)
    return protocols(model, sizes, both_crops=authors)


def measure(
        model: nn.Module,
        checked: CheckedImages,
        chosen: List[Protocol],
        batch_size: int,
        workers: int,
        device: torch.device,
        label: str,
        done: Optional[Dict[str, Dict[str, Any]]] = None,
        on_evaluated: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> List[Dict[str, Any]]:
    """One evaluation per protocol, each printed as it finishes; those in ``done`` (by protocol name) are taken as
    they are, and ``on_evaluated`` receives each new one."""
    model.to(device)
    evaluations = []
    for protocol in chosen:
        evaluation = (done or {}).get(protocol.name)
        if evaluation is None:
            dataset = DecodedImages(checked.samples, checked.sha256)
            evaluation = evaluate(model, dataset, protocol, batch_size, workers, device,
                                  desc=f'{label} @ {protocol.name}')
            if on_evaluated is not None:
                on_evaluated(evaluation)
        print(f"{label} @ {protocol.name} ({protocol.describe()}): top-1 {evaluation['top1']:.3f}%, "
              f"top-5 {evaluation['top5']:.3f}% on {evaluation['image_count']} images")
        evaluations.append(evaluation)
    return evaluations


def evaluate(
        model: nn.Module,
        dataset: DecodedImages,
        protocol: Protocol,
        batch_size: int = 64,
        workers: int = 4,
        device: torch.device = torch.device('cpu'),
        desc: str = 'validate',
) -> Dict[str, Any]:
    """Top-1 / top-5 of ``model`` over ``dataset``, preprocessed by ``protocol`` through validate.py's pipeline."""
    data_config = protocol.data_config(model)
    if device.type == 'cuda':  # what validate.py sets before it builds its model
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=batch_size, use_prefetcher=True,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=workers, crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'],
        pin_memory=device.type == 'cuda', device=device, img_dtype=torch.float32, persistent_workers=False)
    top_k = min(5, model.num_classes)
    correct1 = correct5 = 0
    count = 0  # the images evaluated, each one decoded and as checked
    model.eval()
    with torch.inference_mode(), Progress(len(dataset), desc) as progress:
        try:
            for images, targets in loader:
                logits = model(images)
                hits = logits.topk(top_k, dim=1).indices == targets.unsqueeze(1)
                correct1 += int(hits[:, 0].sum())
                correct5 += int(hits.any(dim=1).sum())
                count += len(targets)
                progress.update(len(targets))
        except UnreadableImageError as e:
            # from a loader worker the message comes wrapped in the worker's traceback, ours on its last line
            message = str(e).strip().splitlines()[-1].split(f'{UnreadableImageError.__name__}: ', 1)[-1]
            raise UserError(f'{message} (it was checked before the run began: did it change during the run?); '
                            'nothing was written') from None
    return {
        'protocol': protocol.name,
        'preprocessing': protocol.describe(),
        'convention': protocol.convention(),
        'validate_py_flags': protocol.validate_py_flags(),
        'input_size': list(data_config['input_size']),
        'crop_pct': data_config['crop_pct'],
        'resize': protocol.resize,
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


def results_record(model_name: str, weights: Path, weights_sha256: str, data_dir: Path, found: FoundImages,
                   checked: CheckedImages, evaluations: List[Dict[str, Any]], device: torch.device,
                   command: str) -> Dict[str, Any]:
    """The results file: what was measured (``model_name`` as the command was given it), on exactly which weights
    and images, how, and the command."""
    return {
        'format': RESULTS_FORMAT,
        'model': model_name,
        'weights': {'file': printable_name(weights.name), 'size': weights.stat().st_size, 'sha256': weights_sha256},
        'data': {
            'dir': printable_name(str(data_dir.resolve())), 'sha256': checked.digest, 'image_count': len(checked.samples),
            'num_classes': len(found.class_to_idx), 'class_map': found.class_map, 'skipped': checked.skipped,
        },
        'evaluations': evaluations,
        'device': str(device),
        'pipeline': "timm's validate.py with its defaults: create_loader with the prefetcher, float32",
        'command': command,
        'versions': {
            'timm_sknet': timm_sknet.__version__, 'timm': timm.__version__, 'torch': torch.__version__,
            'python': platform.python_version(),
        },
    }


def available_device(name: str) -> torch.device:
    """``name`` as a device this machine has, said in one line before any work when it has not."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # torch says "not compiled with CUDA" by an AssertionError
        cuda = f'cuda (on {torch.cuda.device_count()} GPUs)' if torch.cuda.is_available() else 'no cuda'
        raise UserError(f'--device {name} is not available on this machine ({str(e).strip().splitlines()[0]}; it '
                        f'has cpu and {cuda}); pass --device cpu') from None
    return device


def _command_line(args: argparse.Namespace, chosen: List[Protocol], output: Path) -> str:
    """The command that reproduces these results, defaults spelled out."""
    sizes = list(dict.fromkeys(protocol.size for protocol in chosen))
    words = ['timm-sknet', 'validate', '--model', args.model, '--weights', str(args.weights),
             '--input-size', ','.join(map(str, sizes))]
    if args.class_map is not None:
        words += ['--class-map', str(args.class_map)]
    words += ['--batch-size', str(args.batch_size), '--workers', str(args.workers), '--device', args.device]
    if args.skip_unreadable:
        words.append('--skip-unreadable')
    words += ['--output', str(output), str(args.data_dir)]
    return shlex.join(words)
