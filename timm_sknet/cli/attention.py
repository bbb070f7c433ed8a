"""``timm-sknet attention``: the paper's kernel-selection analysis (Sec. 4.4, Figs. 3-4) written to files; its
command line is in ``commands.py``.

Captures every SK unit's selection weights (``timm_sknet.analysis.attention``) on images enlarged by centre crop
and resize, and writes units.csv, channels.csv, attention.json and the figures units.png and channels.png; with
--per-class also classes.csv and classes.png.
"""
import argparse
import contextlib
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from timm.data import resolve_data_config
from timm.data.readers.reader_image_folder import find_images_and_targets
from timm.utils import ParseKwargs
from torch import nn
from tqdm import tqdm

from .. import model_names
from ..analysis.attention import SKUnit, capture_selection, check_zoom_scale, mean_difference, sk_units, zoom_transform
from ..io.errors import UserError
from ..io.files import check_can_write, check_name, check_writable, sha256_file, write_error, write_outputs
from ..io.images import open_rgb
from ..io.synthetic import synthetic_images
from ..weights.loading import create_model, create_model_with_weights
from . import attention_plots

__all__ = ['run']

_OUTPUTS = ('units.csv', 'channels.csv', 'units.png', 'channels.png', 'attention.json')
_CLASS_OUTPUTS = ('classes.csv', 'classes.png')
_ZOOM_TEXT = ('scale s: shorter side resized to round(s * floor(H / crop_pct)), centre crop H x W '
              '(s = 1 is the eval preprocessing; the view shows the central 1/s of the 1.0x view)')
_STATISTIC_TEXT = ('per image and unit: mean over channels of (attention of the largest kernel path - of the '
                   'smallest); mean_difference / std_difference: mean and population std over images')


def _check_args(args: argparse.Namespace) -> None:
    ParseKwargs(option_strings=[], dest='model_kwargs')(None, args, args.model_kwargs)  # KEY=VALUE -> dict
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.model.split('.')[0] not in model_names():
        raise UserError(f"'{args.model}' is not a timm_sknet SK model; use one of: {', '.join(model_names())}")
    for scale in args.scales:
        try:
            check_zoom_scale(scale)
        except ValueError as e:
            raise UserError(f'--scales: {e}; give each scale >= 1, e.g. --scales 1.0,1.5,2.0') from None
    if len(set(args.scales)) != len(args.scales):
        raise UserError(f'--scales lists a scale twice ({args.scales}); give each once')
    for option, minimum in (('synthetic', 0), ('workers', 0), ('channel_group', 1), ('batch_size', 1),
                            ('img_size', 1)):
        value = getattr(args, option)
        if value is not None and value < minimum:
            raise UserError(f"--{option.replace('_', '-')} must be at least {minimum}, got {value}")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise UserError(f'--crop-pct must be in (0, 1], got {args.crop_pct}')
    if args.synthetic and (args.images or args.per_class):
        raise UserError('--synthetic makes its own pictures; drop the IMAGE arguments and --per-class')
    if args.per_class and (len(args.images) != 1 or not Path(args.images[0]).is_dir()):
        raise UserError('--per-class needs exactly one IMAGE argument: an ImageFolder root (one folder per class)')
    if not args.images and not args.synthetic:
        raise UserError('no images given; pass image files or folders, or --synthetic N')
    if args.weights is not None and not args.weights.is_file():
        raise UserError(f'weights file {args.weights} does not exist')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device '{args.device}' is not a torch device; pass e.g. --device cpu") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'--device {args.device}: this machine has no CUDA device; use --device cpu')


def _check_outputs(out_dir: Path, names: Sequence[str], force: bool) -> None:
    check_name(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f'--out {out_dir} is a file; give a folder')
        for name in names:
            check_can_write(out_dir / name, force)
    elif not out_dir.parent.is_dir():
        raise UserError(f'the parent of --out {out_dir} does not exist; create it first')
    else:
        check_writable(out_dir.parent, out_dir)


def _image_sources(args: argparse.Namespace) -> Tuple[List[Union[str, Image.Image]], np.ndarray, List[str]]:
    """(image paths or pictures, class index per image, class names)."""
    if args.synthetic:
        return synthetic_images(args.synthetic, seed=args.seed), np.zeros(args.synthetic, dtype=np.int64), []
    if args.per_class:
        samples, class_to_idx = find_images_and_targets(args.images[0])
        if not samples:
            raise UserError(f'no images found under {args.images[0]}; expected ROOT/<class>/<image>')
        class_names = sorted(class_to_idx, key=class_to_idx.get)
        return [path for path, _ in samples], np.array([target for _, target in samples]), class_names
    paths = []
    for item in map(Path, args.images):
        if item.is_dir():
            found = [path for path, _ in find_images_and_targets(str(item))[0]]
            if not found:
                raise UserError(f'no images found under {item}')
            paths += found
        elif item.is_file():
            paths.append(str(item))
        else:
            raise UserError(f'image {item} does not exist')
    return paths, np.zeros(len(paths), dtype=np.int64), []


def _build_model(args: argparse.Namespace) -> nn.Module:
    model_kwargs = dict(args.model_kwargs)
    if args.weights is not None:
        return create_model_with_weights(args.model, args.weights, **model_kwargs)[0]
    torch.manual_seed(args.seed)
    return create_model(args.model, **model_kwargs).eval()


def _model_units(args: argparse.Namespace, model: nn.Module) -> Tuple[List[SKUnit], List[str]]:
    """(every SK unit, the names of those to plot per channel and per class)."""
    try:
        units = sk_units(model)
    except ValueError:
        raise UserError(f'{args.model} has no SK units with attention (built with sk_attention=False?)') from None
    for unit in units:
        if min(unit.kernel_sizes) == max(unit.kernel_sizes):
            raise UserError(f'{unit.name}: every path has kernel size {unit.kernel_sizes[0]}; no kernel to compare')
    names = [unit.name for unit in units]
    plotted = args.units or [
        unit.name for unit, following in zip(units, units[1:] + [None])
        if following is None or following.stage != unit.stage]
    unknown = [name for name in plotted if name not in names]
    if unknown:
        raise UserError(f"--units: {', '.join(unknown)} not in {args.model}; it has {', '.join(names)}")
    return units, plotted


def _write(out_dir: Path, outputs: Dict[str, Union[str, bytes]], force: bool) -> None:
    """All the outputs or none; a folder made for them goes again when they could not be written."""
    try:
        out_dir.mkdir()
        made = True
    except FileExistsError:
        made = False
    except OSError as e:
        raise write_error(out_dir, e) from None
    try:
        write_outputs({out_dir / name: content for name, content in outputs.items()}, force)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only while empty
        raise


class _ZoomedViews(torch.utils.data.Dataset):
    """Each image at every zoom scale: (S, 3, H, W), or an error message for an unreadable file."""

    def __init__(self, sources: Sequence[Union[str, Image.Image]], zooms: Sequence[Callable]):
        self.sources = sources
        self.zooms = zooms

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], str]:
        source = self.sources[index]
        if isinstance(source, Image.Image):
            image = source
        else:
            # returned, not raised: an exception in a loader worker would reach the user as a traceback
            try:
                image = open_rgb(source)
            except Exception as e:  # noqa: BLE001  (PIL's decoders raise OSError, SyntaxError, ValueError and others)
                return None, f'cannot read image {source} ({e}); remove or replace it'
        return torch.stack([zoom(image) for zoom in self.zooms]), ''


def _as_list(batch: list) -> list:
    return batch


class _SelectionStats:
    """Per-image mean differences of every unit, and per-channel attention sums of the plotted units."""

    def __init__(self, units: Sequence[SKUnit], num_scales: int, channel_units: Sequence[str]):
        self.units = units
        self.num_scales = num_scales
        self._differences = {unit.name: [] for unit in units}  # (B, S) float64 per batch
        self._channel_sums = {name: 0. for name in channel_units}  # (S, M, C) float64
        self.count = 0

    def update(self, weights: Dict[str, torch.Tensor]) -> None:
        """Add one forward pass whose batch holds every image at every scale, image-major."""
        for unit in self.units:
            w = weights[unit.name].unflatten(0, (-1, self.num_scales))  # (B, S, M, C)
            self._differences[unit.name].append(mean_difference(w, unit).numpy())
            if unit.name in self._channel_sums:
                self._channel_sums[unit.name] = self._channel_sums[unit.name] + w.double().sum(0).numpy()
        self.count += len(next(iter(weights.values()))) // self.num_scales

    def per_image(self) -> Dict[str, np.ndarray]:
        """Unit name -> (images, scales) mean differences."""
        return {name: np.concatenate(batches) for name, batches in self._differences.items()}

    def channel_means(self) -> Dict[str, np.ndarray]:
        """Plotted unit name -> (scales, paths, channels) attention averaged over images."""
        return {name: sums / self.count for name, sums in self._channel_sums.items()}


def _collect(model: nn.Module, loader: torch.utils.data.DataLoader, stats: _SelectionStats, device: torch.device,
             progress: bool) -> None:
    with capture_selection(model) as selection, torch.inference_mode(), \
            tqdm(total=len(loader.dataset), unit='img', disable=not progress) as bar:
        for batch in loader:
            for _, error in batch:
                if error:
                    raise UserError(error)
            views = torch.stack([v for v, _ in batch])  # (B, S, 3, H, W)
            model(views.flatten(0, 1).to(device))
            stats.update(selection.weights)
            bar.update(len(batch))


def _format(value: float) -> str:
    return repr(float(value))  # the shortest text that reads back as the same double


def _csv_text(header: Sequence[str], rows: Iterator[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _units_csv(units: Sequence[SKUnit], scales: Sequence[float], per_image: Dict[str, np.ndarray]) -> str:
    def rows():
        for unit in units:
            values = per_image[unit.name]
            for s, scale in enumerate(scales):
                yield (unit.name, unit.module_name, unit.stage, unit.index, unit.channels,
                       max(unit.kernel_sizes), min(unit.kernel_sizes), scale, len(values),
                       _format(values[:, s].mean()), _format(values[:, s].std()))
    return _csv_text(('unit', 'module', 'stage', 'index', 'channels', 'large_kernel', 'small_kernel', 'scale',
                      'images', 'mean_difference', 'std_difference'), rows())


def _channels_csv(units: Sequence[SKUnit], scales: Sequence[float], channel_means: Dict[str, np.ndarray]) -> str:
    def rows():
        for unit in units:
            for s, scale in enumerate(scales):
                for path, kernel in enumerate(unit.kernel_sizes):
                    for channel, value in enumerate(channel_means[unit.name][s, path]):
                        yield unit.name, scale, path, kernel, channel, _format(value)
    return _csv_text(('unit', 'scale', 'path', 'kernel', 'channel', 'mean_attention'), rows())


def _split_by_class(values: np.ndarray, targets: np.ndarray, num_classes: int) -> List[np.ndarray]:
    order = np.argsort(targets, kind='stable')
    return np.split(values[order], np.cumsum(np.bincount(targets, minlength=num_classes))[:-1])


def _classes_csv(units: Sequence[SKUnit], scales: Sequence[float], per_image: Dict[str, np.ndarray],
                 targets: np.ndarray, class_names: Sequence[str]) -> str:
    by_class = {unit.name: _split_by_class(per_image[unit.name], targets, len(class_names)) for unit in units}

    def rows():
        for class_index, class_name in enumerate(class_names):
            for unit in units:
                values = by_class[unit.name][class_index]
                for s, scale in enumerate(scales):
                    yield (class_index, class_name, unit.name, scale, len(values),
                           _format(values[:, s].mean()), _format(values[:, s].std()))
    return _csv_text(
        ('class_index', 'class_name', 'unit', 'scale', 'images', 'mean_difference', 'std_difference'), rows())


def _weights_label(args: argparse.Namespace) -> str:
    if args.weights is None:
        return f'random-init weights (untrained, seed {args.seed})'
    return f'weights {args.weights.name}'


def _render(
        args: argparse.Namespace,
        units: Sequence[SKUnit],
        plotted: Sequence[str],
        stats: _SelectionStats,
        data_config: Dict[str, Any],
        targets: np.ndarray,
        class_names: Sequence[str],
) -> Dict[str, Union[str, bytes]]:
    """Output file name -> content."""
    by_name = {unit.name: unit for unit in units}
    per_image = stats.per_image()
    channel_means = stats.channel_means()
    scale_labels = [f'{scale:.1f}x' if scale == round(scale, 1) else f'{scale:g}x' for scale in args.scales]
    title = f'{args.model}, {_weights_label(args)}, {stats.count} images'
    outputs = {
        'units.csv': _units_csv(units, args.scales, per_image),
        'channels.csv': _channels_csv([by_name[name] for name in plotted], args.scales, channel_means),
        'units.png': attention_plots.plot_unit_differences(
            list(by_name), scale_labels,
            np.stack([per_image[unit.name].mean(0) for unit in units]),
            np.stack([per_image[unit.name].std(0) for unit in units]),
            units[0].difference_label, title),
        'channels.png': attention_plots.plot_channel_attention(
            plotted, scale_labels,
            [channel_means[name][:, by_name[name].largest_path] for name in plotted],
            [max(by_name[name].kernel_sizes) for name in plotted], args.channel_group, title),
    }
    summary = {
        'model': args.model,
        'model_kwargs': args.model_kwargs,
        'weights': ({'path': str(args.weights), 'sha256': sha256_file(args.weights)} if args.weights
                    else _weights_label(args)),
        'preprocessing': {key: data_config[key] for key in
                          ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')},
        'zoom': _ZOOM_TEXT,
        'scales': args.scales,
        'statistic': _STATISTIC_TEXT,
        'images': stats.count,
        'inputs': [f'synthetic ({args.synthetic} pictures, seed {args.seed})'] if args.synthetic else args.images,
        'units': [{
            'name': unit.name, 'module': unit.module_name, 'stage': unit.stage, 'index': unit.index,
            'channels': unit.channels, 'kernel_sizes': list(unit.kernel_sizes),
            'mean_difference': per_image[unit.name].mean(0).tolist(),
            'std_difference': per_image[unit.name].std(0).tolist(),
        } for unit in units],
    }
    if args.per_class:
        outputs['classes.csv'] = _classes_csv(units, args.scales, per_image, targets, class_names)
        outputs['classes.png'] = attention_plots.plot_class_differences(
            plotted, scale_labels,
            [np.stack([values.mean(0) for values in _split_by_class(per_image[name], targets, len(class_names))])
             for name in plotted],
            units[0].difference_label, title)
        summary['classes'] = list(class_names)
    outputs['attention.json'] = json.dumps(summary, indent=1) + '\n'
    return outputs


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    _check_outputs(args.out, _OUTPUTS + (_CLASS_OUTPUTS if args.per_class else ()), args.force)
    attention_plots.require_matplotlib()
    sources, targets, class_names = _image_sources(args)
    model = _build_model(args)
    units, plotted = _model_units(args, model)
    data_config = resolve_data_config({'img_size': args.img_size, 'crop_pct': args.crop_pct}, model=model)
    try:
        zooms = [zoom_transform(data_config, scale) for scale in args.scales]
    except ValueError as e:
        raise UserError(f'{args.model}: {e}') from None

    device = torch.device(args.device)
    loader = torch.utils.data.DataLoader(
        _ZoomedViews(sources, zooms), batch_size=args.batch_size, num_workers=args.workers, collate_fn=_as_list)
    stats = _SelectionStats(units, len(args.scales), plotted)
    _collect(model.to(device), loader, stats, device, progress=not args.synthetic and len(sources) > 1)
    outputs = _render(args, units, plotted, stats, data_config, targets, class_names)

    _write(args.out, outputs, args.force)
    print(f"wrote {', '.join(outputs)} to {args.out}", file=sys.stderr)
    return 0
