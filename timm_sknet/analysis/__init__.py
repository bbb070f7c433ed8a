"""Analyses of trained SK models: what the SK attention selects (``attention``, the paper's Figs. 3-4)."""
