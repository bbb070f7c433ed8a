"""The gate before a card quotes a number: the top-1 measured at 224 against the one the authors report.

More than ``SHORTFALL_LIMIT`` points below the authors' number almost always means a conversion or evaluation
mistake (channel order, mean / std, resize, the wrong prototxt), so publishing is refused unless the maintainer
states why the shortfall is right (``--accept-shortfall REASON``); the card then states the shortfall and the reason
word for word. A measured number above the authors' passes. The comparison is exact (fractions, no float rounding).
"""
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Dict, Optional

from timm_sknet.io.errors import UserError
from timm_sknet.weights.release import CAFFE, PYTORCHINSIGHT, AuthorsWeights

__all__ = ['GATE_SIZE', 'SHORTFALL_LIMIT', 'Verdict', 'check_gate', 'gated_evaluation']

GATE_SIZE = 224  # the size every authors' number is reported at
SHORTFALL_LIMIT = Fraction(1, 2)  # percentage points below the authors' top-1

USUAL_CAUSES = {
    CAFFE: 'the channel order (the caffemodel takes BGR; convert-caffe folds the swap into conv1), the mean / std '
           '(the Caffe release subtracts 104, 117, 123 and scales nothing), the resize (shorter side 256, bilinear, '
           'centre crop 224) and the prototxt (SKNet-101 has attention width 16 in conv3_x)',
    PYTORCHINSIGHT: "the mean / std (ImageNet's), the resize (shorter side 256, bilinear, centre crop 224) and a "
                      'checkpoint of another model or epoch',
}


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on one set of results: what was compared, and the reason a shortfall was accepted."""
    reported: float  # the authors' top-1 at GATE_SIZE, %
    reported_in: str
    measured: float  # %, from exact counts
    protocol: str
    shortfall: float  # reported - measured, percentage points (negative: measured above)
    accepted_reason: Optional[str]  # set only when the shortfall exceeds the limit and was accepted

    @property
    def short(self) -> bool:
        return self.accepted_reason is not None

    def describe(self) -> str:
        where = f"the authors' {self.reported:g}%, from {self.reported_in}"
        if self.shortfall > 0:
            comparison = f'{self.shortfall:.3f} points below {where}'
        else:
            comparison = f'{-self.shortfall:.3f} points above {where}' if self.shortfall else f'equal to {where}'
        measured = f'top-1 at {GATE_SIZE} ({self.protocol}) {self.measured:.3f}%, {comparison}'
        if self.short:
            return f'shortfall accepted: {measured}; reason: {self.accepted_reason}'
        return f'passed: {measured} (the limit is {float(SHORTFALL_LIMIT):g} points below)'

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def gated_evaluation(results: Dict[str, Any], authors: AuthorsWeights) -> Dict[str, Any]:
    """The evaluation the gate compares: at 224 with the pretrained preprocessing (resize 256, crop 224)."""
    for evaluation in results['evaluations']:
        if evaluation['input_size'][-1] == GATE_SIZE and evaluation['resize'] == 256:
            return evaluation
    raise UserError(f'the results hold no evaluation at {GATE_SIZE} px with the resize to 256 that '
                    f'{authors.paper_name} is reported at; validate with --input-size 224 as well')


def check_gate(results: Dict[str, Any], authors: AuthorsWeights, accept_shortfall: Optional[str]) -> Verdict:
    """The verdict on ``results`` for the authors' weights ``authors``: passed, or a shortfall accepted for
    ``accept_shortfall``; a shortfall without a reason is refused in one line."""
    if accept_shortfall is not None and not accept_shortfall.strip():
        raise UserError('--accept-shortfall needs the reason the card will state, e.g. --accept-shortfall "the '
                        'released file differs from the one the paper measured"')
    evaluation = gated_evaluation(results, authors)
    measured = Fraction(100 * evaluation['top1_correct'], evaluation['image_count'])
    reported = Fraction(str(authors.reported_top1[GATE_SIZE]))
    shortfall = reported - measured
    too_short = shortfall > SHORTFALL_LIMIT
    if too_short and accept_shortfall is None:
        raise UserError(
            f'measured top-1 at {GATE_SIZE} is {float(measured):.3f}%, {float(shortfall):.3f} points below the '
            f"authors' {float(reported):g}% (from {authors.reported_in}), more than the {float(SHORTFALL_LIMIT):g} a "
            f'card may quote; nothing was published. Usual causes: {USUAL_CAUSES[authors.kind]}. Fix the cause, or pass '
            '--accept-shortfall "REASON" to publish with the shortfall and the reason on the card')
    return Verdict(float(reported), authors.reported_in, float(measured), evaluation['protocol'], float(shortfall),
                   accept_shortfall if too_short else None)
