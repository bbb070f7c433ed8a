"""A PytorchInsight checkpoint, read without running its pickle.

Their ``imagenet.py`` saves ``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}`` with ``torch.save`` of the
torch 0.4 / 1.0 era: torch's legacy (non-zip) serialization, ``state_dict`` keys prefixed ``module.`` by
``torch.nn.DataParallel``, accuracies as 0-dim tensors saved from the GPU. ``torch.load(weights_only=True)`` reads
both serializations; its unpickler rebuilds tensors, containers and numbers only and refuses any other global
before calling anything, so a file whose pickle would run code is refused and runs nothing. A ``weights_only``
passed explicitly is not overridden by ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
"""
import io
import os
import pickle
import re
import warnings
from typing import Dict, NamedTuple

import torch

from timm_sknet.io.errors import UserError
from timm_sknet.io.files import read_input_file

from .mapping import DATA_PARALLEL_PREFIX

RECORDED_KEYS = ('epoch', 'acc', 'best_acc')  # what the training script records beside the weights


class Checkpoint(NamedTuple):
    state_dict: Dict[str, torch.Tensor]  # keys without the DataParallel prefix
    file_keys: Dict[str, str]  # state_dict key -> the key as the file spells it, for messages
    records: Dict[str, str]  # of RECORDED_KEYS, those the file holds as a number, as it records them


def _load_error(path: os.PathLike, error: Exception) -> UserError:
    text = str(error)
    disallowed = re.search(r'GLOBAL (\S+)', text)
    if isinstance(error, pickle.UnpicklingError) and disallowed:
        return UserError(
            f'checkpoint {path} needs code to load (its pickle calls {disallowed.group(1)}, which is not a tensor, '
            'container or number), so none of it was run; convert the checkpoint PytorchInsight published')
    # torch wraps the weights-only unpickler's reason in paragraphs of advice: keep the reason
    reason = text.split('WeightsUnpickler error:')[-1]
    reason = next((line.strip() for line in reason.splitlines() if line.strip()), type(error).__name__)
    return UserError(f'checkpoint {path} is truncated or not a PyTorch checkpoint ({reason[:200]}); '
                     'download it again')


def _recorded_number(value) -> str:
    """A number as the file records it ('' for anything else): a float32 tensor's 77.538 stays 77.538."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return str(value.detach().reshape(()).numpy())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ''


def read_checkpoint(path: os.PathLike) -> Checkpoint:
    """The weights of a PytorchInsight checkpoint (optimizer state dropped), and its epoch and accuracies."""
    data = read_input_file(path, 'checkpoint')
    try:
        with warnings.catch_warnings():  # what torch.load warns about (sparse invariants, ...) is no news to a user
            warnings.simplefilter('ignore')
            loaded = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception as e:  # damaged bytes fail in many ways: pickle, zip, EOF, KeyError, ...
        raise _load_error(path, e) from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get('state_dict'), dict):
        holds = type(loaded).__name__
        if isinstance(loaded, dict):
            holds = f'{len(loaded)} keys' + (f', e.g. {", ".join(map(str, list(loaded)[:3]))}' if loaded else '')
        raise UserError(f"checkpoint {path} has no 'state_dict' (it holds {holds}): it is not a PytorchInsight "
                        "checkpoint, whose training script saves {'epoch', 'state_dict', 'acc', 'best_acc', "
                        "'optimizer'}")
    state_dict, file_keys = {}, {}
    for file_key, value in loaded['state_dict'].items():
        if not isinstance(file_key, str):
            raise UserError(f'checkpoint {path}: state_dict has a key {file_key!r} that is not a name; it is not a '
                            'PytorchInsight checkpoint')
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            kind = f'{value.layout} tensor' if isinstance(value, torch.Tensor) else type(value).__name__
            raise UserError(f'checkpoint {path}: state_dict entry {file_key!r} is a {kind}, not a dense tensor; it '
                            'is not a PytorchInsight checkpoint')
        key = file_key.removeprefix(DATA_PARALLEL_PREFIX)
        if key in state_dict:
            raise UserError(f'checkpoint {path} holds both {file_keys[key]} and {file_key}: one tensor twice, '
                            'with and without the DataParallel prefix; it is damaged')
        state_dict[key], file_keys[key] = value.detach(), file_key
    records = {key: _recorded_number(loaded.get(key)) for key in RECORDED_KEYS}
    return Checkpoint(state_dict, file_keys, {key: value for key, value in records.items() if value})
