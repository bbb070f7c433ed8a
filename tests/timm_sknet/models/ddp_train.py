"""A few DDP training steps of an SKNet, set up the way timm's train.py sets them up; run it with torchrun.

    torchrun --nproc_per_node=2 tests/ddp_train.py --output OUT_DIR

Every rank seeds itself differently (train.py's ``random_seed(seed, rank)``), so ranks start from different
weights and train on different synthetic batches: DDP's initial broadcast and gradient averaging must make
them agree, and ``distribute_bn`` (train.py's default ``--dist-bn reduce``) averages the BN running stats.
Then the trained model goes through ``timm.layers.convert_sync_batchnorm`` (train.py's ``--sync-bn``).
PyTorch runs SyncBatchNorm only on accelerators (DDP refuses to wrap it on CPU, and its training forward
raises there), so on CPU the converted model is checked in eval mode, inside the process group: every BN
must be converted, the state-dict keys must not change and the outputs must equal the unconverted model's.
Each rank writes ``OUT_DIR/rank{N}.json`` with digests of its weights and the conversion facts.
"""
import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

import timm
import timm_sknet  # noqa: F401  registers the models even where the start-up hook is not installed
from timm import utils
from timm.layers import convert_sync_batchnorm
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def batchnorm_names(model: nn.Module, kind: type = _BatchNorm) -> List[str]:
    return [name for name, module in model.named_modules() if isinstance(module, kind)]


def check_sync_batchnorm(model: nn.Module, probe: torch.Tensor) -> Dict[str, Any]:
    """Convert the trained model as train.py's --sync-bn does and compare its eval outputs with the original's."""
    model.eval()
    with torch.no_grad():
        reference = model(probe)
    names_before = batchnorm_names(model)
    keys_before = list(model.state_dict())
    synced = convert_sync_batchnorm(model)
    with torch.no_grad():
        output = synced(probe)
    return dict(
        batchnorms=names_before,
        sync_batchnorms=batchnorm_names(synced, nn.SyncBatchNorm),
        all_batchnorms_after=batchnorm_names(synced),
        state_dict_keys_unchanged=list(synced.state_dict()) == keys_before,
        max_abs_output_diff=(output - reference).abs().max().item(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='sknet26')
    parser.add_argument('--num-classes', type=int, default=5)
    parser.add_argument('--img-size', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=4, help='per rank')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--lr', type=float, default=0.01)
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--output', type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one core per rank
    args.device = 'cpu'
    utils.init_distributed_device(args)  # train.py's set-up: gloo on CPU; sets distributed, rank, world_size
    if not args.distributed:
        raise SystemExit('ddp_train.py needs torch.distributed: launch it with torchrun --nproc_per_node=N')
    utils.random_seed(args.seed, args.rank)

    model = timm.create_model(args.model, num_classes=args.num_classes)
    created = weights_digest(model)
    # no find_unused_parameters: DDP fails on the second step if any SK parameter gets no gradient
    ddp_model = DistributedDataParallel(model)
    initial = weights_digest(model)
    optimizer = create_optimizer_v2(ddp_model, opt='momentum', lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=0.1)

    losses = []
    ddp_model.train()
    for _ in range(args.steps):
        images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        labels = torch.randint(0, args.num_classes, (args.batch_size,))
        loss = loss_fn(ddp_model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    utils.distribute_bn(ddp_model, args.world_size, reduce=True)
    trained = weights_digest(model)

    probe = torch.randn(2, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    result = dict(
        rank=args.rank, world_size=args.world_size, backend=torch.distributed.get_backend(),
        created=created, initial=initial, trained=trained, losses=losses,
        sync_bn=check_sync_batchnorm(model, probe),
    )
    torch.distributed.destroy_process_group()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f'rank{result["rank"]}.json').write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
