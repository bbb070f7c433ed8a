"""The SKNet paper and the authors' releases: what the model cards quote and where users get the weights.

The Caffe release (github.com/implus/SKNet) links the SKNet-50 and SKNet-101 caffemodels on Google Drive and carries
no licence file; the reported numbers are the paper's (single centre crop, ImageNet-1k val). The authors' PyTorch
SK-ResNet-50* / 101* checkpoints are linked from PytorchInsight's README (Google Drive, Baidu), also without a
licence file.
"""
from dataclasses import dataclass
from typing import Dict

from ..io.errors import UserError

PAPER_TITLE = 'Selective Kernel Networks'
PAPER_AUTHORS = 'Xiang Li, Wenhai Wang, Xiaolin Hu, Jian Yang'
PAPER_URL = 'https://arxiv.org/abs/1903.06586'
RELEASE_URL = 'https://github.com/implus/SKNet'
PYTORCHINSIGHT_URL = 'https://github.com/implus/PytorchInsight'
PYTORCHINSIGHT_TAG = 'pytorchinsight_in1k'  # the tag of sk_resnet50 / sk_resnet101 that convert-pytorchinsight fills
# The input the released weights expect: BGR, 0..255, minus this per-channel mean (BGR order), no std. timm's data
# config spells the same as RGB (x / 255 - mean) / std (models/sk_resnet.py); the converter folds BGR -> RGB into conv1.
CAFFE_BGR_MEAN = (104., 117., 123.)
CITATION = """\
@inproceedings{li2019selective,
  title={Selective Kernel Networks},
  author={Li, Xiang and Wang, Wenhai and Hu, Xiaolin and Yang, Jian},
  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2019}
}"""


@dataclass(frozen=True)
class ReleasedModel:
    paper_name: str
    prototxt: str
    reported_top1_err: Dict[int, float]  # single centre crop on ImageNet-1k val, by input size
    reported_params_m: float
    reported_gflops: float  # multiply-adds at 224

    def reported_top1(self, size: int) -> float:
        return round(100 - self.reported_top1_err[size], 2)

    @property
    def caffemodel(self) -> str:
        """What a user calls the downloaded file in the commands we print (the release does not name it)."""
        return f'{self.paper_name}.caffemodel'


RELEASED_MODELS = {
    'sknet50': ReleasedModel('SKNet-50', 'sknet50.prototxt', {224: 20.79, 320: 19.32}, 27.5, 4.47),
    'sknet101': ReleasedModel('SKNet-101', 'sknet101.prototxt', {224: 20.19, 320: 18.40}, 48.9, 8.46),
}


def released_model(arch: str) -> ReleasedModel:
    if arch not in RELEASED_MODELS:
        raise UserError(f'{arch} has no released Caffe weights; publish one of {", ".join(RELEASED_MODELS)}')
    return RELEASED_MODELS[arch]
