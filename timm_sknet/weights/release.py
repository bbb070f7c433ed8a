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
CAFFE_TAG = 'caffe_in1k'  # the tag of sknet50 / sknet101 that convert-caffe fills
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


CAFFE, PYTORCHINSIGHT = 'caffe', 'pytorchinsight'  # the two kinds of authors' files, each with its converter
CONVERTERS = {CAFFE: 'convert-caffe', PYTORCHINSIGHT: 'convert-pytorchinsight'}


@dataclass(frozen=True)
class AuthorsWeights:
    """A pretrained tag whose weights are the authors' own file, converted, and the top-1 the authors report for it."""
    name: str  # <architecture>.<tag>
    paper_name: str
    kind: str  # CAFFE or PYTORCHINSIGHT: which file, hence which converter
    reported_top1: Dict[int, float]  # %, single centre crop on ImageNet-1k val, by input size
    reported_in: str  # where the authors report it ("the authors' 79.21%, from {reported_in}")
    reported_size: str  # parameters and compute, as the authors count them
    url: str  # where the authors link the file

    @property
    def architecture(self) -> str:
        return self.name.partition('.')[0]

    @property
    def converter(self) -> str:
        return CONVERTERS[self.kind]

    @property
    def source_file(self) -> str:
        """What a user calls the downloaded file in the commands we print (the releases do not name it)."""
        if self.kind == CAFFE:
            return RELEASED_MODELS[self.architecture].caffemodel
        return f'{self.architecture}.pth.tar'


def _caffe_weights(arch: str) -> AuthorsWeights:
    release = RELEASED_MODELS[arch]
    reported = {size: release.reported_top1(size) for size in release.reported_top1_err}
    size = f'{release.reported_params_m}M parameters and {release.reported_gflops} GMACs at 224 x 224 in the paper'
    return AuthorsWeights(f'{arch}.{CAFFE_TAG}', release.paper_name, CAFFE, reported,
                          'the paper, as 100 minus its top-1 error', size, RELEASE_URL)


def _pytorchinsight_weights(arch: str, paper_name: str, top1: float, params_m: float, gflops: float
                            ) -> AuthorsWeights:
    size = f"{params_m}M parameters and {gflops} GFLOPs at 224 x 224 in PytorchInsight's README"
    return AuthorsWeights(f'{arch}.{PYTORCHINSIGHT_TAG}', paper_name, PYTORCHINSIGHT, {224: top1},
                          "PytorchInsight's README", size, PYTORCHINSIGHT_URL)


AUTHORS_WEIGHTS = {weights.name: weights for weights in (
    _caffe_weights('sknet50'),
    _caffe_weights('sknet101'),
    _pytorchinsight_weights('sk_resnet50', 'SK-ResNet-50*', 77.538, 26.15, 4.185),
    _pytorchinsight_weights('sk_resnet101', 'SK-ResNet-101*', 78.792, 45.68, 7.978),
)}


def authors_weights(model_name_tag: str) -> AuthorsWeights:
    """The authors' weights of ``<architecture>.<tag>``; one line naming those there are when it has none."""
    if model_name_tag not in AUTHORS_WEIGHTS:
        raise UserError(f"{model_name_tag} holds no weights of the authors' releases; the tags that do are "
                        f"{', '.join(AUTHORS_WEIGHTS)}")
    return AUTHORS_WEIGHTS[model_name_tag]
