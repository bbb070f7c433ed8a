"""A PytorchInsight state dict -> the tensors of timm's ``sk_resnet50`` / ``sk_resnet101``, every one accounted for.

Each checkpoint tensor goes to the timm tensor ``mapping.timm_name`` gives it, unchanged but for its dtype; the
conversion refuses, in one line naming the first problem, a tensor with no place, a timm tensor left empty, a shape
or kind (floating or integer) that differs, and NaN or Inf anywhere. BatchNorm ``num_batches_tracked`` is taken
from the file; a file of a torch that did not save it (before 0.4.1) leaves it at its default, 0.
"""
import re
from typing import Dict, List

import numpy as np
import torch

from timm_sknet.io.errors import UserError
from timm_sknet.weights.loading import create_model

from .mapping import checkpoint_name, timm_name
from .reader import Checkpoint

BATCH_COUNT = '.num_batches_tracked'


def target_tensors(model_name: str) -> Dict[str, torch.Tensor]:
    """The state dict the conversion fills: names, shapes and dtypes of ``model_name``, built on the meta device
    (no memory, no initialisation)."""
    with torch.device('meta'):
        return create_model(model_name).state_dict()


def _stage_units(keys) -> List[int]:
    units = {found.groups() for found in map(re.compile(r'layer([1-4])\.(\d+)\.').match, keys) if found}
    return [sum(1 for stage, _ in units if stage == str(s)) for s in range(1, 5)]


def _shape(tensor: torch.Tensor) -> str:
    return 'x'.join(map(str, tensor.shape)) or 'a scalar'


def convert_state_dict(checkpoint: Checkpoint, target: Dict[str, torch.Tensor], model_name: str
                       ) -> Dict[str, np.ndarray]:
    """Arrays named, shaped and typed as ``target``, from the checkpoint's tensors; ``UserError`` on any mismatch,
    before the caller writes anything."""
    found_units, expected_units = _stage_units(checkpoint.state_dict), _stage_units(target)
    if any(found_units) and found_units != expected_units:
        raise UserError(
            f"the checkpoint's stages have {'/'.join(map(str, found_units))} units, {model_name}'s "
            f"{'/'.join(map(str, expected_units))}: it is another model (--model {model_name} is wrong?)")
    placed, unplaced = {}, []  # timm key -> checkpoint key; checkpoint keys of no timm tensor
    for key in checkpoint.state_dict:
        name = timm_name(key)
        if name in target:
            placed[name] = key
        else:
            unplaced.append(checkpoint.file_keys[key])
    if unplaced:
        raise UserError(
            f'{len(unplaced)} tensors of the checkpoint have no place in {model_name}, e.g. {unplaced[0]}: it holds '
            "another architecture than PytorchInsight's sk_resnet50 / sk_resnet101")
    counts_saved = any(name.endswith(BATCH_COUNT) for name in placed)
    missing = [name for name in target if name not in placed and (counts_saved or not name.endswith(BATCH_COUNT))]
    if missing:
        raise UserError(
            f"the checkpoint has no {checkpoint_name(missing[0])} (for {model_name}'s {missing[0]}), nor "
            f'{len(missing) - 1} other tensors {model_name} needs: it is incomplete or of another architecture')

    tensors, non_finite = {}, []
    for name, expected in target.items():
        if name not in placed:  # a num_batches_tracked the file's torch did not save
            tensors[name] = np.zeros(expected.shape, dtype=np.int64)
            continue
        value, file_key = checkpoint.state_dict[placed[name]], checkpoint.file_keys[placed[name]]
        if value.shape != expected.shape:
            raise UserError(f"{file_key} is {_shape(value)}, {model_name}'s {name} {_shape(expected)}: the "
                            'checkpoint is of another geometry (--model wrong?)')
        if value.is_floating_point() != expected.is_floating_point():
            raise UserError(f"{file_key} holds {value.dtype} values, {model_name}'s {name} {expected.dtype}: "
                            'the checkpoint is damaged or of another model')
        array = value.to(expected.dtype).contiguous().numpy()
        if expected.is_floating_point() and not np.isfinite(array).all():
            non_finite.append((file_key, int(np.count_nonzero(~np.isfinite(array)))))
        tensors[name] = array
    if non_finite:
        file_key, count = non_finite[0]
        raise UserError(f'{len(non_finite)} tensors of the checkpoint hold NaN or Inf, e.g. {file_key} ({count} '
                        'values): the file is damaged; download it again')
    return tensors
