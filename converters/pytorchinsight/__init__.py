"""convert-pytorchinsight: the SKNet authors' PyTorch SK-ResNet checkpoints (PytorchInsight) -> timm safetensors."""
