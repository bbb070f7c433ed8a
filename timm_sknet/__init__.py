"""timm-sknet: Selective Kernel Networks in timm's model registry. Importing it registers the models."""
from .layers import SKAttention, SKBasicBlock, SKBottleneck, SKConv
from .sknet import SKNet

__version__ = '0.1.0'
