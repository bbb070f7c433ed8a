"""The target architectures as data: what ``convert-caffe`` checks a caffemodel against, without PyTorch.

Importing torch and timm takes more memory than converting a 200 MB caffemodel does, so the conversion reads
its target from ``converters/specs/<model>.json`` instead of building the timm model. The files are generated
here from the timm models themselves, and ``tests/converters/caffe/test_convert_spec.py`` checks that each shipped file equals
what the model generates, so a spec cannot drift from its architecture. After changing an architecture:

    python -m converters.caffe.spec --write

A spec holds the architecture name, the units per stage, the head's pool size, one record per convolution,
linear, batch-norm and max-pool module (the geometry and eps the conversion compares) and the state dict's
key -> shape, in state-dict order.
"""
import argparse
import json
import sys
from typing import Any, Dict, List, Optional

import timm
from torch import nn

import timm_sknet  # noqa: F401  (registers the SK models with timm)

from .convert import CAFFE_TAG, SPEC_DIR

__all__ = ['architecture_spec', 'release_specs', 'spec_text']


def _pair(value) -> List[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def _module_record(module: nn.Module) -> Optional[Dict[str, Any]]:
    if isinstance(module, nn.Conv2d):
        return dict(
            type='Conv2d', kernel=list(module.kernel_size), stride=list(module.stride), padding=list(module.padding),
            dilation=list(module.dilation), groups=module.groups)
    if isinstance(module, nn.Linear):
        return dict(type='Linear')
    if isinstance(module, nn.BatchNorm2d):
        return dict(type='BatchNorm2d', eps=module.eps)
    if isinstance(module, nn.MaxPool2d):
        return dict(
            type='MaxPool2d', kernel=_pair(module.kernel_size), stride=_pair(module.stride),
            padding=_pair(module.padding), ceil_mode=module.ceil_mode)
    return None


def architecture_spec(model: nn.Module) -> Dict[str, Any]:
    """What the conversion needs of ``model`` (built on any device, meta included), as JSON-ready data."""
    modules = {}
    for name, module in model.named_modules():
        record = _module_record(module)
        if record is not None:
            modules[name] = record
    return dict(
        architecture=model.pretrained_cfg['architecture'],
        stage_units=[len(getattr(model, name)) for name in model.stage_names],
        head_pool=list(model.pretrained_cfg['pool_size']),
        modules=modules,
        tensors={key: list(tensor.shape) for key, tensor in model.state_dict().items()},
    )


def release_specs() -> Dict[str, Dict[str, Any]]:
    """Model name -> spec of every model with the release's input convention (a ``caffe_in1k`` tag)."""
    names = sorted({name.split('.')[0] for name in timm.list_pretrained(f'*.{CAFFE_TAG}')})
    return {name: architecture_spec(timm.create_model(f'{name}.{CAFFE_TAG}', device='meta')) for name in names}


def spec_text(spec: Dict[str, Any]) -> str:
    """The spec as JSON with one module or tensor a line: compact, and a regenerated file diffs by entry."""
    items = []
    for key, value in spec.items():
        if isinstance(value, dict):
            entries = ',\n'.join(f'    {json.dumps(name)}: {json.dumps(entry)}' for name, entry in value.items())
            items.append(f'  {json.dumps(key)}: {{\n{entries}\n  }}')
        else:
            items.append(f'  {json.dumps(key)}: {json.dumps(value)}')
    return '{\n' + ',\n'.join(items) + '\n}\n'


def main() -> int:
    parser = argparse.ArgumentParser(
        prog='python -m converters.caffe.spec', description="check (or regenerate) convert-caffe's architecture specs")
    parser.add_argument('--write', action='store_true', help=f'rewrite the files in {SPEC_DIR}')
    args = parser.parse_args()
    generated = {name: spec_text(spec) for name, spec in release_specs().items()}
    shipped = {path.stem: path.read_text() for path in SPEC_DIR.glob('*.json')}
    if shipped == generated:
        print(f'{len(shipped)} specs in {SPEC_DIR} are up to date')
        return 0
    if not args.write:
        print(f'the specs in {SPEC_DIR} differ from the timm models; '
              'regenerate them: python -m converters.caffe.spec --write')
        return 1
    for name in shipped.keys() - generated.keys():
        (SPEC_DIR / f'{name}.json').unlink()
    for name, text in generated.items():
        (SPEC_DIR / f'{name}.json').write_text(text)
    print(f'wrote {", ".join(sorted(generated))} to {SPEC_DIR}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
