"""What the release tests share: the authors' files, made here in their exact formats; an ImageNet-val-shaped folder
whose labels are what the converted weights predict (so the gate has a number to pass or refuse); and
``timm-sknet release`` run as a user runs it, in a subprocess, against a Hub on loopback.

The one seam: ImageNet-1k val's 50,000 images cannot ship with the tests, so the process that runs the release
shrinks the set a card's number must cover (``validation_set_seam``).
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import timm
import torch
from timm.data import ImageNetInfo, create_loader

from authors_checkpoint import authors_state_dict, save_authors_checkpoint
from converters.caffe.command import convert_caffemodel
from converters.caffe.demo import release_like_model
from converters.caffe.writer import write_caffemodel
from converters.pytorchinsight.command import convert_checkpoint
from hub_cards.data import DecodedImages
from hub_cards.protocols import Protocol
from hub_helpers import NAMESPACE, TOKEN, WriteHub, client_env
from timm_sknet.io.synthetic import synthetic_images
from validation_set_seam import SHRUNK_TIMM_SKNET

SYNSETS = ImageNetInfo().label_names()
REPO = 'sknet50.caffe_in1k'
IMAGES = 4  # in the validation folders the tests make
RUN_TIMEOUT_S = 600


class Source(NamedTuple):
    model: str  # <architecture>.<tag>
    file: Path
    converted: torch.nn.Module  # what the release's conversion gives, built here the same way


def caffe_source(directory: Path) -> Source:
    """A release-format SKNet-50 caffemodel, random weights with trained-looking BatchNorm."""
    caffemodel = directory / 'SKNet-50.caffemodel'
    write_caffemodel(release_like_model('sknet50'), caffemodel)
    tensors, _ = convert_caffemodel(str(caffemodel), 'sknet50')
    return Source('sknet50.caffe_in1k', caffemodel, _model('sknet50.caffe_in1k', tensors))


def pytorchinsight_source(directory: Path) -> Source:
    """The authors' SK-ResNet-50 checkpoint, as their training script saves it."""
    checkpoint = save_authors_checkpoint(directory / 'sk_resnet50.pth.tar', authors_state_dict('sk_resnet50'))
    tensors, _ = convert_checkpoint(str(checkpoint), 'sk_resnet50')
    return Source('sk_resnet50.pytorchinsight_in1k', checkpoint, _model('sk_resnet50.pytorchinsight_in1k', tensors))


def _model(name: str, tensors) -> torch.nn.Module:
    model = timm.create_model(name)
    model.load_state_dict({key: torch.tensor(value) for key, value in tensors.items()})
    return model.eval()


def predictions(model: torch.nn.Module, images: Sequence[Path], protocol: Optional[Protocol] = None
                ) -> List[Tuple[int, float]]:
    """(class, margin of its logit over the runner-up) of each image, preprocessed by ``protocol`` (default: the
    release's 224 one) as validation preprocesses it."""
    cfg = model.pretrained_cfg
    config = (protocol or Protocol(224, cfg['crop_pct'], cfg['interpolation'])).data_config(model)
    loader = create_loader(DecodedImages([(str(path), 0) for path in images]), input_size=config['input_size'],
                           batch_size=1, use_prefetcher=True, interpolation=config['interpolation'],
                           mean=config['mean'], std=config['std'], crop_pct=config['crop_pct'], num_workers=0,
                           device=torch.device('cpu'))
    found = []
    with torch.inference_mode():
        for batch, _ in loader:
            top2 = model(batch)[0].topk(2)
            found.append((int(top2.indices[0]), float(top2.values[0] - top2.values[1])))
    return found


def imagenet_like(root: Path, source: Source, count: int, mislabelled: int = 0, seed: int = 0) -> Tuple[int, int]:
    """``count`` JPEGs in ImageNet synset folders, each in the class the converted weights predict for it (the
    clearest of twice as many candidates), but for the first ``mislabelled``, moved to the next synset; returns the
    (images, classes) the folder holds."""
    candidates = root.parent / f'{root.name}-candidates'
    candidates.mkdir(parents=True)
    paths = []
    for i, image in enumerate(synthetic_images(2 * count, 256, seed)):
        paths.append(candidates / f'ILSVRC2012_val_{i + 1:08d}.JPEG')
        image.save(paths[-1], quality=90)
    predicted = predictions(source.converted, paths)
    clearest = sorted(range(len(paths)), key=lambda i: -predicted[i][1])[:count]
    classes = set()
    for rank, i in enumerate(sorted(clearest)):
        label = predicted[i][0] + (1 if rank < mislabelled else 0)
        folder = root / SYNSETS[label % len(SYNSETS)]
        folder.mkdir(parents=True, exist_ok=True)
        paths[i].rename(folder / paths[i].name)
        classes.add(folder.name)
    return count, len(classes)


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    def summary(self) -> str:
        return self.stdout[self.stdout.index('released '):]

    def step_lines(self) -> List[str]:
        return [line for line in self.stdout.splitlines() if line.startswith('[')]


class Releaser:
    """``timm-sknet release`` for one source and data folder, against one Hub, with one store."""

    def __init__(self, source: Source, data: Path, expected: Tuple[int, int], endpoint: str, home: Path):
        self.source, self.data, self.expected = source, data, expected
        self.env = client_env(endpoint, home / 'hf', home / 'store')
        self.env.update(HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET='1', OMP_NUM_THREADS='1')

    def command(self, repo: str, workdir: Path, *extra: str) -> List[str]:
        return [sys.executable, '-c', SHRUNK_TIMM_SKNET, *map(str, self.expected), 'release', '--model', self.source.model,
                '--source', str(self.source.file), '--data', str(self.data), '--repo-id', f'{NAMESPACE}/{repo}',
                '--workdir', str(workdir), '--workers', '0', '--batch-size', '4', '--device', 'cpu', *extra]

    def run(self, repo: str, workdir: Path, *extra: str, env: Optional[Dict[str, str]] = None) -> Run:
        proc = subprocess.run(self.command(repo, workdir, *extra), env=env or self.env, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def interrupt(self, repo: str, workdir: Path, step: int, sig: int, delay: float) -> Run:
        """Start the release and send ``sig`` ``delay`` seconds after it announces step ``step`` (1-5)."""
        with subprocess.Popen(self.command(repo, workdir), env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(f'[{step}/5] ') and line.rstrip().endswith(': started'):
                    time.sleep(delay)
                    proc.send_signal(sig)
                    break
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        return Run(proc.returncode, ''.join(lines) + stdout, stderr)


class Released(NamedTuple):
    run: Run
    workdir: Path
    requests: List[dict]  # what the server was asked during the run


def release(releaser: Releaser, hub: WriteHub, repo: str, workdir: Path, *extra: str) -> Released:
    """The release to ``repo`` with ``workdir``, and what ``hub`` was asked meanwhile."""
    before = len(hub.requests())
    run = releaser.run(repo, workdir, *extra)
    return Released(run, workdir, hub.requests()[before:])


def uploads(requests: List[dict]) -> Dict[str, int]:
    """How many times each LFS object was stored (a PUT the server took), by oid."""
    counts: Dict[str, int] = {}
    for request in requests:
        if request['method'] == 'PUT' and request['status'] == 200:
            counts[request['oid']] = counts.get(request['oid'], 0) + 1
    return counts


def commits(requests: List[dict]) -> List[dict]:
    return [r for r in requests if r['method'] == 'POST' and '/commit/' in r['path'] and r['status'] == 200]


def results_of(workdir: Path) -> dict:
    return json.loads((workdir / 'results.json').read_text())


SIGNALS = {'SIGINT': signal.SIGINT, 'SIGKILL': signal.SIGKILL}
