"""convert-pytorchinsight --install killed (SIGKILL) at a seeded sweep of moments of a real run (``kill_sweep``):
after every kill the store slot is absent or whole, the next install succeeds and removes what the killed ones left,
``timm-sknet installed`` lists those leftovers and then none, and an earlier install keeps every byte."""
import sys
from pathlib import Path

from kill_sweep import install_survives_kills

CONVERT = Path(sys.executable).parent / 'convert-pytorchinsight'
SLOT = 'sk_resnet50.pytorchinsight_in1k'


def test_install_killed_at_any_moment(sk_resnet50_checkpoint, tmp_path, monkeypatch, capsys):
    install_survives_kills([CONVERT, sk_resnet50_checkpoint, '--model', 'sk_resnet50', '--install'],
                           tmp_path / 'store' / SLOT, monkeypatch, capsys, spread=3, anchored=1)
