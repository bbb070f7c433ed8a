"""torchrun --nproc_per_node=2 (gloo, CPU) trains sknet26 with DDP; ranks must end bit-identical."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import timm
import torch

from timm_sknet import SKAttention, SKConv

TESTS = Path(__file__).resolve().parent
WORLD_SIZE = 2
TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_ddp_sknet26(tmp_path):
    torchrun = Path(sys.executable).with_name('torchrun')
    cmd = [
        str(torchrun), '--nnodes=1', f'--nproc-per-node={WORLD_SIZE}', '--master-addr=127.0.0.1',
        f'--master-port={free_port()}', str(TESTS / 'ddp_train.py'),
        '--model', 'sknet26', '--img-size', '64', '--batch-size', '4', '--steps', '3', '--output', str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f'{proc.stdout}\n{proc.stderr}'
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(WORLD_SIZE)]
    first, second = ranks

    assert [r['rank'] for r in ranks] == [0, 1]
    assert all(r['world_size'] == WORLD_SIZE and r['backend'] == 'gloo' for r in ranks)
    # seeded per rank: different initial weights and data, so agreement is DDP's doing
    assert first['created'] != second['created']
    assert first['losses'] != second['losses']
    assert first['initial'] == second['initial'] == first['created']
    assert first['trained'] == second['trained'] != first['initial']

    for rank in ranks:
        sync_bn = rank['sync_bn']
        assert len(sync_bn['batchnorms']) > 0
        # every BN became a SyncBatchNorm, the SK attention BNs included, and nothing else is a BN
        assert sync_bn['sync_batchnorms'] == sync_bn['batchnorms'] == sync_bn['all_batchnorms_after']
        assert 'layer1.0.conv2.attn.bn' in sync_bn['sync_batchnorms']
        assert 'layer4.1.conv2.paths.1.bn' in sync_bn['sync_batchnorms']
        assert sync_bn['state_dict_keys_unchanged']
        assert sync_bn['max_abs_output_diff'] == 0.0


def test_sk_units_keep_no_python_state():
    """Nothing but parameters and buffers change in a training step: safe to replicate, shard and compile."""
    model = timm.create_model('sknet26', num_classes=5).train()
    sk_modules = [m for m in model.modules() if isinstance(m, (SKConv, SKAttention))]

    def python_state():
        return [{k: repr(v) for k, v in vars(m).items() if not k.startswith('_')} for m in sk_modules]

    before = python_state()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(sk_modules) == 2 * 8 and python_state() == before
