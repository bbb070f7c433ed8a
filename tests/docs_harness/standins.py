"""Stand-ins for the files a user of the docs would download, written under the names the docs use.

The docs' commands name the authors' files (``SKNet-50.caffemodel``, ``sk_resnet50.pth.tar``) and an ImageNet
folder (``imagenet/``), none of which can be fetched here. Each stand-in is in the real file's exact format, with
random (trained-looking) weights, so the commands run as they would on the real file; only the numbers differ.
A stand-in is made once per test session (``make``) and then linked into each page's working directory.

To add one: a function ``(path: Path) -> None`` that writes the file or folder at ``path``, registered in
``STANDINS`` under the name the docs use.
"""
import os
import shutil
import zlib
from pathlib import Path
from typing import Callable, Dict

import numpy as np
from PIL import Image


def _release_caffemodel(model_name: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from converters.caffe.demo import release_like_model
        from converters.caffe.writer import write_caffemodel
        write_caffemodel(release_like_model(model_name), path)
    return write


def _authors_checkpoint(model_name: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from authors_checkpoint import authors_state_dict, save_authors_checkpoint  # tests/, on the tests' path
        save_authors_checkpoint(path, authors_state_dict(model_name))
    return write


# ImageNet's layout (val/<synset>/*.JPEG), a few classes of a few generated pictures each
IMAGENET_SYNSETS = ('n01440764', 'n01443537', 'n01484850', 'n01491361')
IMAGES_PER_CLASS = 2


def _imagenet(path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for synset in IMAGENET_SYNSETS:
            folder = path / split / synset
            folder.mkdir(parents=True)
            for i in range(IMAGES_PER_CLASS):
                pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'{synset}_{i:08d}.JPEG', quality=90)


def _pictures(path: Path) -> None:
    """``cat.jpg`` / ``dog.jpg``: any picture will do for the commands that take one."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(path, quality=90)


def _picture_folder(path: Path) -> None:
    path.mkdir()
    for name in ('cat.jpg', 'dog.jpg'):
        _pictures(path / name)


STANDINS: Dict[str, Callable[[Path], None]] = {
    'SKNet-50.caffemodel': _release_caffemodel('sknet50'),
    'sk_resnet50.pth.tar': _authors_checkpoint('sk_resnet50'),
    'imagenet': _imagenet,
    'cat.jpg': _pictures,
    'dog.jpg': _pictures,
    'images': _picture_folder,
}


def make(name: str, cache: Path) -> Path:
    """The stand-in ``name`` in ``cache``, written there the first time it is asked for."""
    if name not in STANDINS:
        raise KeyError(f'no stand-in named {name!r}; known: {", ".join(sorted(STANDINS))} (tests/docs_harness/standins.py)')
    path = cache / name
    if not path.exists():
        partial = cache / '.partial' / name  # the same name: writers choose the format by it
        partial.parent.mkdir(exist_ok=True)
        if partial.exists():  # left by a run that was killed
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        STANDINS[name](partial)
        os.replace(partial, path)
    return path


def link_into(name: str, cache: Path, workdir: Path) -> None:
    """``name`` in ``workdir``: hard links to the cached stand-in (no copy of 100+ MB; the commands only read it)."""
    source = make(name, cache)
    target = workdir / name
    if source.is_dir():
        shutil.copytree(source, target, copy_function=os.link)
    else:
        os.link(source, target)
