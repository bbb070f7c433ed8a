"""``pretrained=True`` for timm-sknet's models: the local store first, then the Hub, else an error that says how
to get the weights.

A model file's ``_create_*`` calls ``build_model_with_store`` where timm's own call ``build_model_with_cfg``.
The store (``timm_sknet.weights.store``) holds what ``convert-caffe --install`` wrote; a copy there wins over the Hub and
is loaded through timm's own ``file`` source, so timm's scripts (``validate.py --pretrained``) use it unchanged.
"""
import logging
from pathlib import Path
from typing import Any, Callable, Type, TypeVar, Union

from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from timm.models import PretrainedCfg, build_model_with_cfg, resolve_pretrained_cfg

from ..io.errors import UserError
from .release import PYTORCHINSIGHT_TAG, PYTORCHINSIGHT_URL, RELEASE_URL, RELEASED_MODELS
from .store import installed_path

ModelT = TypeVar('ModelT')
_logger = logging.getLogger(__name__)


class PretrainedWeightsNotFoundError(UserError, FileNotFoundError):
    """Neither the local store nor the Hub has a model's pretrained weights; the message says how to install them.

    A ``FileNotFoundError``, as huggingface_hub's ``LocalEntryNotFoundError`` that it is chained to.
    """


def build_model_with_store(
        model_cls: Union[Type[ModelT], Callable[..., ModelT]],
        variant: str,
        pretrained: bool,
        **kwargs: Any,
) -> ModelT:
    """timm's ``build_model_with_cfg``, with ``pretrained=True`` reading the store's copy of the tag if there is one.

    Weights the caller named (``hf-hub:`` / ``local-dir:`` names, a ``file`` or ``state_dict`` in the pretrained
    cfg) are left to timm. Otherwise an installed ``<variant>.<tag>`` is loaded, and the log says which file;
    without one timm asks the Hub, and a Hub that cannot give the weights becomes ``PretrainedWeightsNotFoundError``.
    """
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if cfg.source or cfg.file or cfg.state_dict is not None:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    installed = installed_path(name)
    if installed.is_file():
        _logger.info(f'{name}: loading the installed copy {installed} (the local store comes before the Hub)')
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(installed))
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (HfHubHTTPError, EntryNotFoundError) as e:
        raise PretrainedWeightsNotFoundError(_not_found_message(name, cfg, installed, e)) from e


def _not_found_message(name: str, cfg: PretrainedCfg, installed: Path, hub_error: Exception) -> str:
    # huggingface_hub's LocalEntryNotFoundError says only "check your connection"; its cause says what happened
    detail = (str(hub_error.__cause__ or hub_error).strip().splitlines() or [''])[0]
    found = (f'{name} has no pretrained weights here: the local store has no {installed}, and the Hub repo '
             f'{cfg.hf_hub_id} ({cfg.hf_hub_filename or "its weights"} at {hf_constants.ENDPOINT}) could not be '
             f'read ({type(hub_error).__name__}: {detail}).')
    release = RELEASED_MODELS.get(cfg.architecture)
    if release is not None:
        return (f'{found} To install them: download the {release.paper_name} caffemodel linked from {RELEASE_URL}, '
                f'then run: convert-caffe {release.caffemodel} --model {cfg.architecture} --install')
    if cfg.tag == PYTORCHINSIGHT_TAG:
        return (f'{found} To install them: download the {cfg.architecture} checkpoint linked from '
                f'{PYTORCHINSIGHT_URL} (README), then run: convert-pytorchinsight {cfg.architecture}.pth.tar '
                f'--model {cfg.architecture} --install')
    return f'{found} Fetch them once with Hub access (they are cached), or save their safetensors as {installed}.'
