"""``pretrained=True`` for timm-sknet's models: the local store first, then the Hub, else an error that says how
to get the weights. An installed copy is checked before timm reads it (``store.installed_problem``: changed since
install, damaged, not fitting the model, non-finite values); one that fails raises ``InstalledWeightsError``, naming
the file, the problem and the mend, rather than safetensors' or torch's error or a model that predicts NaN. A copy
whose floating tensors are of another dtype than the model's (an fp16 copy) loads, with one warning line saying so:
``load_state_dict`` would cast it without a word.

A model file's ``_create_*`` calls ``build_model_with_store`` where timm's own call ``build_model_with_cfg``.
The store (``timm_sknet.weights.store``) holds what ``convert-caffe --install`` wrote; a copy there wins over the Hub and
is loaded through timm's own ``file`` source, so timm's scripts (``validate.py --pretrained``) use it unchanged.
"""
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar, Union

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from timm.models import build_model_with_cfg

from ..io.errors import UserError, printable
from .release import PYTORCHINSIGHT_TAG, PYTORCHINSIGHT_URL, RELEASE_URL
from .source import WeightsSource, weights_source
from .store import (
    INSTALL_RECORD, installed_problem, precision_note, read_install_record, read_metadata, refuse_installed,
    reinstall_command, tensor_dtypes)

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
    """timm's ``build_model_with_cfg``, with the Hub repo in today's namespace and ``pretrained=True`` reading the
    store's copy of the tag if there is one.

    Weights the caller named (``hf-hub:`` / ``local-dir:`` names, a ``file`` or ``state_dict`` in the pretrained
    cfg) are left to timm. Otherwise an installed ``<variant>.<tag>`` is loaded, and the log says which file;
    without one timm asks the Hub, and a Hub that cannot give the weights becomes ``PretrainedWeightsNotFoundError``.
    """
    source = weights_source(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {}, **source.cfg_overlay())
    if not pretrained or source.caller_named_weights:
        return build_model_with_cfg(model_cls, variant, pretrained, **dict(kwargs, pretrained_cfg_overlay=overlay))
    if os.path.lexists(source.installed):  # a folder or a dangling link in its place is damage too, not "no copy"
        problem = installed_problem(source.name, source.installed, model_shapes(variant))
        if problem:
            raise refuse_installed(source.name, source.installed, problem)
        if read_install_record(source.name) is None:
            command = reinstall_command(source.name, read_metadata(source.installed))
            _logger.warning(printable(
                f'{source.name}: {source.installed} was installed without a record ({INSTALL_RECORD}), so a change '
                'since install cannot be seen' + (f'; re-install it to record one: {command}' if command else '')))
        _logger.info(printable(f'{source.name}: loading the installed copy {source.installed} (the local store comes '
                               'before the Hub)'))
        overlay['file'] = str(source.installed)
        model = build_model_with_cfg(model_cls, variant, pretrained, **dict(kwargs, pretrained_cfg_overlay=overlay))
        _say_if_cast(source, model)
        return model
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **dict(kwargs, pretrained_cfg_overlay=overlay))
    except (HfHubHTTPError, EntryNotFoundError) as e:
        raise PretrainedWeightsNotFoundError(_not_found_message(source, e)) from e


def _say_if_cast(source: WeightsSource, model: torch.nn.Module) -> None:
    """One warning line when the installed copy's floating tensors are not of the model's dtype, which
    ``load_state_dict`` casts them to without a word (an fp16 copy runs upcast to float32)."""
    model_dtype = next((v.dtype for v in model.state_dict().values() if v.is_floating_point()), torch.float32)
    cast = precision_note(tensor_dtypes(source.installed), str(model_dtype).removeprefix('torch.'))
    if cast:
        _logger.warning(printable(f'{source.name}: the installed copy {source.installed} holds {cast}'))


def model_shapes(arch: str) -> Optional[Dict[str, Tuple[int, ...]]]:
    """The shape of each tensor in ``arch``'s state dict as registered (built on the meta device: no memory, no
    init); None when no model has that name."""
    if not timm.is_model(arch):
        return None
    with torch.device('meta'):
        model = timm.create_model(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _not_found_message(source: WeightsSource, hub_error: Exception) -> str:
    # huggingface_hub's LocalEntryNotFoundError says only "check your connection"; its cause says what happened
    cfg = source.cfg
    detail = (str(hub_error.__cause__ or hub_error).strip().splitlines() or [''])[0]
    found = (f'{source.name} has no pretrained weights here: the local store has no {source.installed}, and the Hub '
             f'repo {cfg.hf_hub_id} ({cfg.hf_hub_filename or "its weights"} at {hf_constants.ENDPOINT}) could not be '
             f'read ({type(hub_error).__name__}: {detail}).')
    if source.release is not None:
        return (f'{found} To install them: download the {source.release.paper_name} caffemodel linked from '
                f'{RELEASE_URL}, then run: convert-caffe {source.release.caffemodel} --model {source.architecture} '
                f'--install')
    if cfg.tag == PYTORCHINSIGHT_TAG:
        return (f'{found} To install them: download the {source.architecture} checkpoint linked from '
                f'{PYTORCHINSIGHT_URL} (README), then run: convert-pytorchinsight {source.architecture}.pth.tar '
                f'--model {source.architecture} --install')
    return (f'{found} Fetch them once with Hub access (they are cached), or save their safetensors as '
            f'{source.installed}.')
