"""The results JSON written by ``timm-sknet validate``, and the checks before a model card may quote it."""
import json
from pathlib import Path
from typing import Any, Dict

from timm_sknet.io.errors import UserError
from timm_sknet.weights.loading import architecture

RESULTS_FORMAT = 'timm-sknet-validate/1'
IMAGENET_VAL_IMAGES = 50_000
IMAGENET_CLASSES = 1000


def read_results(path: Path, weights: Path, weights_sha256: str, model_name: str) -> Dict[str, Any]:
    """Load results measured on exactly ``weights`` (by sha256), for ``model_name``, over all of ImageNet-1k val."""
    if not path.is_file():
        raise UserError(f'results file {path} does not exist; create it with timm-sknet validate')
    try:
        results = json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'{path} is not valid JSON ({e}); pass the file written by timm-sknet validate') from None
    try:
        is_results = results['format'] == RESULTS_FORMAT
        measured_sha256, measured_model, data = results['weights']['sha256'], results['model'], results['data']
        image_count, num_classes = data['image_count'], data['num_classes']
    except (KeyError, TypeError):
        is_results = False
    if not is_results:
        raise UserError(f'{path} is not a timm-sknet validate results file (format {RESULTS_FORMAT})')
    if measured_sha256 != weights_sha256:
        raise UserError(
            f'{path} was measured on other weights (sha256 {measured_sha256[:12]}...) than {weights} '
            f'({weights_sha256[:12]}...); validate the weights being published')
    if architecture(measured_model) != architecture(model_name):
        raise UserError(f'{path} holds results for {measured_model}, not {model_name}')
    if image_count != IMAGENET_VAL_IMAGES or num_classes != IMAGENET_CLASSES:
        raise UserError(
            f'{path} covers {image_count} images of {num_classes} classes, not the {IMAGENET_VAL_IMAGES} '
            'images of ImageNet-1k val; validate on the full validation set')
    return results
