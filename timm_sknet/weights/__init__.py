"""Where weights come from: the release's facts (``release``), the Hub (``hub``), the local store (``store``),
``pretrained=True`` (``pretrained``) and converted files loaded into their model (``loading``). No torch at import
except in ``pretrained`` and ``loading``."""
