"""The one seam of the release tests: a process that runs ``timm-sknet`` with the validation set a card's number must
cover shrunk from ImageNet-1k val's 50,000 images, which cannot ship with the tests, to what a test's folder holds.

It replaces ``hub_cards.results.IMAGENET_1K_VAL`` in that process before the command starts; no option or environment
variable of the command reaches it, and every other line is the one a real release runs.

    python -c SHRUNK_TIMM_SKNET IMAGES CLASSES release ...
"""

# argv: IMAGES CLASSES, then timm-sknet's own arguments
SHRUNK_TIMM_SKNET = """
import sys
import hub_cards.results as results
images, classes = map(int, sys.argv[1:3])
del sys.argv[1:3]
results.IMAGENET_1K_VAL = results.ValidationSet('ImageNet-1k val', images, classes)
from timm_sknet.cli import main
sys.argv[0] = 'timm-sknet'
main()
"""
