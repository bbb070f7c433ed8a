"""The validation images: an ImageFolder, the class map that numbers its class folders, and each image decoded and
hashed once before anything is measured.

A number is computed only from exactly the data it claims: every image is decoded and its sha256 taken before the
evaluation (``check_images``); the data's digest covers each image's path, class and sha256, and the dataset
(``DecodedImages``) checks each image against its sha256 again as it loads it, so an image that changes during the
run stops it instead of being counted as something else. timm's own dataset would replace an image that does not
decode by the next one ("Skipped sample"), which would count that image twice.

Class maps follow timm's ``--class-map`` (a ``.txt`` file, one class folder name per line, in class-index order),
but must list every class the model predicts, each once, and every class folder: timm silently leaves out the
images of a folder that its map lacks, and numbers a short map's classes from 0.
"""
import hashlib
import io
import multiprocessing
import os
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from PIL import Image
from timm.data import create_dataset
from timm.data.readers.img_extensions import get_img_extensions

from timm_sknet.io.errors import UserError, printable
from timm_sknet.io.files import printable_name
from timm_sknet.io.images import open_rgb

from .progress import Progress

__all__ = ['CheckedImages', 'DecodedImages', 'FoundImages', 'UnreadableImageError', 'check_images', 'find_images',
           'read_class_map']

LAYOUT = 'expected DATA_DIR/<class>/<image> (or DATA_DIR/val/<class>/<image>)'


class FoundImages(NamedTuple):
    root: Path  # DATA_DIR, or DATA_DIR/val when it has one
    samples: List[Tuple[str, int]]  # (image file, class index)
    class_to_idx: Dict[str, int]  # the class folders found, and their index
    class_map: str  # what numbered the classes: the map's file, or 'the sorted class folders'


def read_class_map(path: Path) -> List[str]:
    """The class names of a ``--class-map`` file, in index order; refused in one line when it is not one."""
    if path.suffix != '.txt' or not path.is_file():
        raise UserError(f'class map {path} is not an existing .txt file (one class folder name per line)')
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'cannot read class map {path} ({e}); pass a UTF-8 text file') from None
    names = [line.strip() for line in lines]
    if '' in names:
        raise UserError(f'line {names.index("") + 1} of class map {path} is empty; one class folder name per line')
    first_line = {}
    for number, name in enumerate(names, 1):
        if name in first_line:
            raise UserError(f'class map {path} lists {name} twice (lines {first_line[name]} and {number}); each class '
                            'once, in class-index order')
        first_line[name] = number
    return names


def find_images(data_dir: Path, num_classes: int, class_names: Optional[Sequence[str]] = None,
                class_map_source: str = '') -> FoundImages:
    """The ImageFolder's images, numbered as timm's validate.py numbers them (by ``class_names``, the class map of
    ``class_map_source``, when given, else by the sorted class folders); refuses a layout whose count would mislead.
    """
    if not data_dir.is_dir():
        raise UserError(f'data directory {data_dir} does not exist; pass ImageNet val in ImageFolder layout')
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(
            f'the class map {class_map_source} lists {len(class_names)} classes, the model predicts {num_classes}: '
            'it must list every class, in class-index order')
    extensions = ', '.join(get_img_extensions())
    try:  # without a map first: timm's reader with a map would leave out the images of classes the map lacks
        reader = create_dataset('', root=str(data_dir), split='validation').reader
    except RuntimeError:  # timm's "Found 0 images in subfolders of ..."
        others = sum(1 for p in data_dir.rglob('*') if p.is_file())
        holds = f'only {others} other files' if others else 'nothing'
        raise UserError(f'{data_dir} holds no images ({extensions}), {holds}; {LAYOUT}') from None
    root, labels = Path(reader.root), list(reader.class_to_idx)  # a label is the folder holding the image
    if '' in labels:
        loose = sum(1 for _, target in reader.samples if target == reader.class_to_idx[''])
        raise UserError(f'{root} holds {loose} images outside class folders (their class is unknown); {LAYOUT}')
    empty = sorted(p.name for p in root.iterdir() if p.is_dir() and not _holds_images(p))
    if empty:
        raise UserError(
            f'{len(empty)} class folders of {root} hold no images ({extensions}), e.g. {empty[0]}; put that '
            "class's images there, or remove the folder")
    if class_names is None:
        if len(labels) != num_classes:
            raise UserError(
                f'{root} has {len(labels)} class folders but the model predicts {num_classes} classes; pass '
                '--class-map, a file listing every class name in class-index order')
        return FoundImages(root, list(reader.samples), dict(reader.class_to_idx), 'the sorted class folders')
    index = {name: i for i, name in enumerate(class_names)}
    unmapped = [label for label in labels if label not in index]
    if unmapped:
        raise UserError(
            f'{len(unmapped)} class folders of {root} are not in the class map {class_map_source}, e.g. '
            f'{unmapped[0]}: their images would not be counted; add them to the map or move them out of {root}')
    samples = [(path, index[labels[target]]) for path, target in reader.samples]
    return FoundImages(root, samples, {label: index[label] for label in labels}, class_map_source)


def _holds_images(folder: Path) -> bool:
    extensions = get_img_extensions()
    return any(p.suffix.lower() in extensions and p.is_file() for p in folder.rglob('*'))


def _read_and_decode(path: str) -> Tuple[bytes, Optional[Image.Image], str]:
    """The file's bytes, and its RGB image or why it does not decode to one."""
    data = Path(path).read_bytes()
    try:
        return data, open_rgb(io.BytesIO(data)), ''
    except Exception as e:  # noqa: BLE001  (PIL's decoders raise OSError, SyntaxError, ValueError and others)
        return data, None, f'{type(e).__name__}: {e}'


def _check_image(path: str) -> Tuple[str, str]:
    """(why ``path`` does not decode to an RGB image, empty when it does; its sha256)."""
    try:
        data, _, error = _read_and_decode(path)
    except OSError as e:
        return f'{type(e).__name__}: {e}', ''
    return error, hashlib.sha256(data).hexdigest()


class CheckedImages(NamedTuple):
    samples: List[Tuple[str, int]]  # the images that decode, with their class index
    sha256: Dict[str, str]  # image file -> sha256 of its bytes, for those samples
    skipped: List[Dict[str, str]]  # the images that do not decode: file (relative to DATA_DIR) and why
    digest: str  # sha256 over the samples' paths (relative to the ImageFolder's root), classes and sha256s


def data_digest(root: Path, samples: Sequence[Tuple[str, int]], sha256: Dict[str, str]) -> str:
    """What identifies the evaluated data: each image's path below ``root``, its class index and its sha256."""
    digest = hashlib.sha256()
    entries = sorted((os.fsencode(Path(path).relative_to(root).as_posix()), target, sha256[path])
                     for path, target in samples)
    for relative, target, image_sha256 in entries:
        digest.update(relative + f'\t{target}\t{image_sha256}\n'.encode())
    return digest.hexdigest()


def check_images(found: FoundImages, data_dir: Path, skip_unreadable: bool, workers: int) -> CheckedImages:
    """Decode and hash every image once (in ``workers`` processes). Without ``skip_unreadable`` an image that does
    not decode stops the run; with it, it is left out and listed (relative to ``data_dir``, with the reason)."""
    paths = [path for path, _ in found.samples]
    with Progress(len(paths), 'decoding and hashing every image') as progress:
        if workers > 0:
            with multiprocessing.Pool(workers) as pool:
                checks = []
                for check in pool.imap(_check_image, paths, chunksize=32):
                    checks.append(check)
                    progress.update(1)
        else:
            checks = []
            for path in paths:
                checks.append(_check_image(path))
                progress.update(1)
    unreadable = [(path, error) for path, (error, _) in zip(paths, checks) if error]
    if unreadable and not skip_unreadable:
        path, error = unreadable[0]
        raise UserError(
            f'{len(unreadable)} of {len(paths)} images do not decode, the first {path} ({error}); replace them, or '
            'pass --skip-unreadable to leave them out (results that skip images cannot be published)')
    if len(unreadable) == len(paths):
        raise UserError(f'none of the {len(paths)} images in {found.root} decodes; pass readable images')
    samples = [sample for sample, (error, _) in zip(found.samples, checks) if not error]
    sha256 = {path: file_sha256 for path, (error, file_sha256) in zip(paths, checks) if not error}
    skipped = [{'file': printable_name(str(Path(path).relative_to(data_dir))), 'error': printable(error)}
               for path, error in unreadable]
    return CheckedImages(samples, sha256, skipped, data_digest(found.root, samples, sha256))


class UnreadableImageError(Exception):
    """An image that decoded before the run and does not now, or whose bytes changed (one string argument, so a
    loader worker can re-raise it)."""


class DecodedImages(torch.utils.data.Dataset):
    """(image, class index) per sample, as timm's ImageDataset, except that an image that does not decode, or whose
    bytes are no longer those ``sha256`` recorded, raises ``UnreadableImageError`` instead of being replaced by the
    next one. ``create_loader`` sets ``transform``."""

    def __init__(self, samples: List[Tuple[str, int]], sha256: Optional[Dict[str, str]] = None,
                 transform: Optional[Callable] = None):
        self.samples = samples
        self.sha256 = sha256
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            data, image, error = _read_and_decode(path)
        except OSError as e:
            raise UnreadableImageError(f'{path} cannot be read ({type(e).__name__}: {e})') from None
        if image is None:
            raise UnreadableImageError(f'{path} does not decode ({error})')
        if self.sha256 is not None and hashlib.sha256(data).hexdigest() != self.sha256[path]:
            raise UnreadableImageError(f'{path} changed: its bytes are not those checked before the run')
        return (self.transform(image) if self.transform is not None else image), target
