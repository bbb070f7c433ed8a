"""Where one model name's weights come from, resolved once per call: the local store, the Hub, the release.

Configuration is read here, when a model is created or a command runs, never at import: the Hub namespace
(``$TIMM_SKNET_HUB_NAMESPACE``) and the store (``$TIMM_SKNET_HOME``) are whatever they are at that moment.
"""
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional

from timm.models import PretrainedCfg, resolve_pretrained_cfg

from .hub import DEFAULT_HUB_NAMESPACE, hub_repo_id
from .release import RELEASED_MODELS, ReleasedModel
from .store import installed_path

__all__ = ['WeightsSource', 'weights_source']


@dataclass(frozen=True)
class WeightsSource:
    """One pretrained tag and every place its weights may come from."""
    name: str  # <architecture>.<tag>, or the architecture when it has no tag
    architecture: str
    cfg: PretrainedCfg  # timm's pretrained cfg with the Hub repo as configured now
    installed: Path  # where convert-caffe --install puts this tag (it may not exist)
    release: Optional[ReleasedModel]  # the authors' Caffe release of this architecture, if there is one

    @property
    def caller_named_weights(self) -> bool:
        """The caller chose the weights (``hf-hub:`` / ``local-dir:`` names, a ``file`` or ``state_dict``)."""
        return bool(self.cfg.source or self.cfg.file or self.cfg.state_dict is not None)

    def cfg_overlay(self) -> Dict[str, Any]:
        """The pretrained-cfg keys that differ from the registered cfg: the Hub repo as configured now."""
        return {'hf_hub_id': self.cfg.hf_hub_id} if self.cfg.hf_hub_id else {}


def weights_source(variant: str, pretrained_cfg: Any = None, pretrained_cfg_overlay: Optional[Dict] = None
                   ) -> WeightsSource:
    """Resolve ``variant``'s pretrained cfg as timm does, with this project's Hub repos in today's namespace.

    The registered cfgs name the default namespace (``timm-sknet/<model>.<tag>``); a repo there follows
    ``$TIMM_SKNET_HUB_NAMESPACE``. Repos of other namespaces (timm's own ``timm/...``) are left as they are.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay)
    name = f'{cfg.architecture}.{cfg.tag}' if cfg.tag else cfg.architecture
    if cfg.hf_hub_id == f'{DEFAULT_HUB_NAMESPACE}/{name}':
        cfg = replace(cfg, hf_hub_id=hub_repo_id(name))
    return WeightsSource(name, cfg.architecture, cfg, installed_path(name), RELEASED_MODELS.get(cfg.architecture))
