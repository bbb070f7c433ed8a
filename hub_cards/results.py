"""The results JSON written by ``timm-sknet validate`` (and ``release``), and the checks before a card may quote it."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from timm_sknet.io.errors import UserError
from timm_sknet.weights.loading import architecture

# /3: each evaluation names its protocol, the data have a digest (images, classes, sha256s); /2 lacked both;
# /1 counted whatever timm's loader gave
RESULTS_FORMAT = 'timm-sknet-validate/3'


@dataclass(frozen=True)
class ValidationSet:
    """What a card's number must have been measured on: every image of every class, none skipped."""
    name: str
    images: int
    classes: int


# The one set a card quotes. Tests of the whole release path shrink it (they cannot ship 50,000 images), by
# replacing this object in the process they run: no option or environment variable of the commands reaches it.
IMAGENET_1K_VAL = ValidationSet('ImageNet-1k val', 50_000, 1000)


def validation_set() -> ValidationSet:
    """The set a card's number must cover, read when it is checked."""
    return IMAGENET_1K_VAL


def check_complete(results: Dict[str, Any], source: str) -> None:
    """Refuse results (read from ``source``) that skipped an image or did not cover all of ImageNet-1k val."""
    data, expected = results['data'], validation_set()
    if data['skipped']:
        raise UserError(
            f"{source} skipped {len(data['skipped'])} unreadable images (the first {data['skipped'][0]['file']}); "
            'replace them and validate again: a card quotes only results on every validation image')
    if data['image_count'] != expected.images or data['num_classes'] != expected.classes:
        raise UserError(
            f"{source} covers {data['image_count']} images of {data['num_classes']} classes, not the "
            f'{expected.images} images of {expected.name}; validate on the full validation set')


def read_results(path: Path, weights: Path, weights_sha256: str, arch: str) -> Dict[str, Any]:
    """Load results measured on exactly ``weights`` (by sha256), for the architecture ``arch``, over all of ImageNet-1k
    val."""
    if not path.is_file():
        raise UserError(f'results file {path} does not exist; create it with timm-sknet validate')
    try:
        results = json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'{path} is not valid JSON ({e}); pass the file written by timm-sknet validate') from None
    try:
        is_results = results['format'] == RESULTS_FORMAT
        measured_sha256, measured_model, data = results['weights']['sha256'], results['model'], results['data']
        is_results = is_results and isinstance(data['skipped'], list) and all(
            isinstance(data[k], int) for k in ('image_count', 'num_classes')) and isinstance(data['sha256'], str)
        is_results = is_results and all(isinstance(e['protocol'], str) for e in results['evaluations'])
    except (KeyError, TypeError):
        is_results = False
    if not is_results:
        older = isinstance(results, dict) and str(results.get('format', '')).startswith('timm-sknet-validate/')
        raise UserError(f'{path} is not a timm-sknet validate results file (format {RESULTS_FORMAT})' + (
            '; an older validate wrote it, before each number named its preprocessing and the images were hashed: '
            'validate again' if older else ''))
    if measured_sha256 != weights_sha256:
        raise UserError(
            f'{path} was measured on other weights (sha256 {measured_sha256[:12]}...) than {weights} '
            f'({weights_sha256[:12]}...); validate the weights being published')
    if architecture(measured_model) != arch:
        raise UserError(f'{path} holds results for {measured_model}, not {arch}')
    check_complete(results, str(path))
    return results
