"""The SK models and their layers: one file per model family (``sk_resnet``, ``sk_shufflenet``), the SK layer
(``sk_conv``) and the deploy form's BatchNorm folding (``deploy``)."""
