"""Converted weights and the timm model they fit: built in eval mode with the weights loaded exactly."""
from pathlib import Path
from typing import Dict, Tuple

import timm
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from ..io.errors import UserError
from .release import AuthorsWeights, authors_weights
from .store import read_metadata


def architecture(model_name: str) -> str:
    """``sknet50.caffe_in1k`` -> ``sknet50``; refuses names timm does not know."""
    arch, tag = split_model_name_tag(model_name)
    if not timm.is_model(arch):
        raise UserError(f"unknown model '{model_name}'; see timm.list_models('sk*') for the SKNets")
    if tag and model_name not in timm.list_models(arch, include_tags=True):
        raise UserError(f"{arch} has no pretrained tag '{tag}'; use one of {timm.list_models(arch, include_tags=True)}")
    return arch


def authors_weights_of(model_name: str) -> AuthorsWeights:
    """The authors' weights ``model_name`` stands for: ``sknet50`` means its default tag, ``sknet50.caffe_in1k``;
    refused in one line when that tag holds no weights of the authors."""
    arch = architecture(model_name)
    tag = split_model_name_tag(model_name)[1] or get_pretrained_cfg(arch).tag
    return authors_weights(f'{arch}.{tag}')


def create_model(model_name: str, **model_kwargs) -> nn.Module:
    """``timm.create_model``; keywords the model refuses become one line naming them."""
    try:
        return timm.create_model(model_name, **model_kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f'cannot build {model_name} with {model_kwargs}: {e}') from None


def create_model_with_weights(model_name: str, weights: Path, **model_kwargs) -> Tuple[nn.Module, Dict[str, str]]:
    """Build ``model_name`` in eval mode with the weights loaded exactly; return it and the file's metadata.

    The classifier width comes from the weights, so a checkpoint with any number of classes loads;
    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``kernel_size`` for an M = 3 model). Weights that do not
    fit the model, or that hold a NaN or an infinity, are refused in one line naming a tensor.
    """
    arch = architecture(model_name)
    metadata = read_metadata(weights)
    converted_for = metadata.get('model_name')
    if converted_for and architecture(converted_for) != arch:
        raise UserError(f'{weights} holds {converted_for} weights, not {arch}; pass --model {converted_for}')
    state_dict = load_file(str(weights), device='cpu')
    classifier = get_pretrained_cfg(model_name).classifier or 'fc'
    classifier_weight = state_dict.get(f'{classifier}.weight')
    if classifier_weight is None:
        raise UserError(f'{weights} has no {classifier}.weight, so it does not hold {arch} weights')
    model = create_model(model_name, **{'num_classes': classifier_weight.shape[0], **model_kwargs})
    _check_fits(model, state_dict, arch, weights)
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not v.isfinite().all()]
    if non_finite:
        raise UserError(
            f'{weights} holds NaN or infinite values in {len(non_finite)} tensors (first: {non_finite[0]}), which would '
            'make every prediction NaN; convert the caffemodel again (convert-caffe refuses non-finite blobs)')
    model.load_state_dict(state_dict)
    return model.eval(), metadata


def _check_fits(model: nn.Module, state_dict: Dict, arch: str, weights: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and expected[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        first = (missing + unexpected + mismatched)[0]
        raise UserError(
            f'{weights} does not fit {arch}: {len(missing)} missing, {len(unexpected)} unexpected and '
            f'{len(mismatched)} mis-shaped tensors (first: {first}); pass the --model the weights were converted for')
