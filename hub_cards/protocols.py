"""How the validation images are preprocessed: one protocol per measured number, named wherever the number appears.

The Caffe release's readme says "center 224x224/320x320 crop from resized image with shorter side = 256", which
cannot hold for a 320 crop, so the authors' 320 number is measured under both conventions that exist: timm's
(shorter side to 320 / 0.875 = 365, centre crop 320: crop_pct 0.875, what the pretrained config says) and the full
crop of fb.resnet.torch and ResNet-200's 320 test (shorter side to 320, crop all of it: crop_pct 1.0). timm's
validate.py gives either with ``--img-size 320 --crop-pct 0.875`` or ``--crop-pct 1.0``.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

from timm.data import resolve_data_config
from torch import nn

__all__ = ['BOTH_CROPS_SIZE', 'FULL_CROP', 'Protocol', 'protocols']

BOTH_CROPS_SIZE = 320  # the authors' test size, measured under both conventions for the authors' weights
FULL_CROP = 1.0


@dataclass(frozen=True)
class Protocol:
    size: int  # the square crop the model sees
    crop_pct: float  # the crop's share of the resized shorter side
    interpolation: str

    @property
    def resize(self) -> int:
        """The shorter side before the centre crop, as timm's eval transform computes it."""
        return math.floor(self.size / self.crop_pct)

    @property
    def name(self) -> str:
        """Short and unique among a model's protocols: '224', '320 crop_pct 1.0'."""
        return f'{self.size} crop_pct {self.crop_pct}'

    def describe(self) -> str:
        return f'{self.interpolation} resize of the shorter side to {self.resize}, centre crop {self.size}'

    def convention(self) -> str:
        """Whose convention the crop is."""
        if self.crop_pct == FULL_CROP:
            return "the full crop of fb.resnet.torch and ResNet-200's 320 test (crop_pct 1.0)"
        return f"timm's crop_pct {self.crop_pct}"

    def validate_py_flags(self) -> str:
        """The flags that make timm's validate.py preprocess the same way."""
        return f'--img-size {self.size} --crop-pct {self.crop_pct}'

    def data_config(self, model: nn.Module) -> Dict[str, Any]:
        config = resolve_data_config({'input_size': (3, self.size, self.size), 'crop_pct': self.crop_pct}, model=model)
        assert config['interpolation'] == self.interpolation
        return config


def protocols(model: nn.Module, sizes: Sequence[int], both_crops: bool) -> List[Protocol]:
    """The protocols at ``sizes``: the pretrained config's crop (its test crop at its test size); with
    ``both_crops`` (the authors' weights) also the full crop at ``BOTH_CROPS_SIZE``."""
    cfg = model.pretrained_cfg
    found = []
    for size in sizes:
        at_test_size = bool(cfg.get('test_input_size')) and cfg['test_input_size'][-1] == size
        crop_pct = (cfg.get('test_crop_pct') if at_test_size else None) or cfg['crop_pct']
        found.append(Protocol(size, crop_pct, cfg['interpolation']))
        if both_crops and size == BOTH_CROPS_SIZE and crop_pct != FULL_CROP:
            found.append(Protocol(size, FULL_CROP, cfg['interpolation']))
    return found
