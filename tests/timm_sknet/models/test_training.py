"""timm's train.py pipeline, block by block, on sknet26 with generated 64 px images.

Each call below is the one train.py makes, with train.py's keyword arguments; the values are the README's
SKNet recipe (SGD momentum 0.9, lr 0.1 per 256 images, weight decay 1e-4, step decay /10 every 30 epochs,
label smoothing 0.1, random-resized crop + flip) plus train.py's regularisers switched on.
"""
from argparse import Namespace
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import timm
import timm_sknet  # noqa: F401  the start-up hook has its own tests (test_plugin.py); this one is about training
from timm import utils
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.layers import DropBlock2d, DropPath
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import load_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask

NUM_CLASSES = 4
IMG_SIZE = 64
BATCH_SIZE = 4


def recipe_args(**overrides) -> Namespace:
    """train.py's parsed arguments: its defaults, then the README recipe's flags."""
    args = dict(
        model='sknet26', pretrained=False, num_classes=NUM_CLASSES, in_chans=None, input_size=None,
        img_size=IMG_SIZE, crop_pct=None, mean=None, std=None, interpolation='', gp=None,
        drop=0.1, drop_path=0.05, drop_block=0.05, bn_momentum=None, bn_eps=None, torchscript=False,
        initial_checkpoint='', model_kwargs={},
        batch_size=BATCH_SIZE, opt='momentum', momentum=0.9, weight_decay=1e-4, opt_eps=None, opt_betas=None,
        lr=None, lr_base=0.1, lr_base_size=256, lr_base_scale='linear',
        sched='step', epochs=100, decay_epochs=30, decay_rate=0.1, warmup_epochs=0, cooldown_epochs=0,
        warmup_lr=1e-5, min_lr=0., sched_on_updates=False, eval_metric='top1', seed=42,
        smoothing=0.1, no_aug=False, scale=[0.08, 1.0], ratio=[3. / 4., 4. / 3.], hflip=0.5, vflip=0.,
        color_jitter=0., color_jitter_prob=None, grayscale_prob=None, gaussian_blur_prob=None, aa=None,
        reprob=0., remode='pixel', recount=1, resplit=False, train_crop_mode=None,
        train_interpolation='bilinear', workers=0, worker_seeding='all', pin_mem=False, prefetcher=True,
        checkpoint_hist=2, log_interval=50,
    )
    args.update(overrides)
    return Namespace(**args)


def create_train_model(args: Namespace) -> nn.Module:
    """train.py's create_model call, keyword for keyword."""
    return timm.create_model(
        args.model,
        pretrained=args.pretrained,
        in_chans=args.in_chans or 3,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        drop_block_rate=args.drop_block,
        global_pool=args.gp,
        bn_momentum=args.bn_momentum,
        bn_eps=args.bn_eps,
        scriptable=args.torchscript,
        checkpoint_path=args.initial_checkpoint,
        **args.model_kwargs,
    )


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """ImageFolder train/ and validation/ splits: a tint per class under noise, larger than the crop."""
    root = tmp_path_factory.mktemp('imagenet-like')
    rng = np.random.default_rng(0)
    tints = rng.integers(0, 256, (NUM_CLASSES, 3))
    for split, per_class in (('train', 4), ('validation', 2)):
        for c in range(NUM_CLASSES):
            class_dir = root / split / f'class{c}'
            class_dir.mkdir(parents=True)
            for i in range(per_class):
                noise = rng.integers(-40, 41, (80, 96, 3))
                pixels = np.clip(tints[c] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(class_dir / f'{i}.png')
    return root


def validate(model, loader, loss_fn, args) -> OrderedDict:
    """train.py's validate(): top-1 / top-5 with timm's meters over the eval loader."""
    losses_m, top1_m, top5_m = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    model.eval()
    with torch.inference_mode():
        for input, target in loader:
            output = model(input)
            loss = loss_fn(output, target)
            acc1, acc5 = utils.accuracy(output, target, topk=(1, 5))
            losses_m.update(loss.item(), output.shape[0])
            top1_m.update(acc1.item(), output.shape[0])
            top5_m.update(acc5.item(), output.shape[0])
    return OrderedDict([('loss', losses_m.avg), ('top1', top1_m.avg), ('top5', top5_m.avg)])


def test_train_py_pipeline_sknet26(image_folder, tmp_path):
    args = recipe_args()
    device = torch.device('cpu')
    utils.random_seed(args.seed, 0)

    model = create_train_model(args)
    # train.py's regularisers reach the SK units: dropout before fc, DropPath per unit, DropBlock in the paths
    assert model.drop_rate == args.drop
    assert isinstance(model.layer4[-1].drop_path, DropPath)
    assert any(isinstance(m, DropBlock2d) for m in model.layer3[0].conv2.paths.modules())

    data_config = resolve_data_config(vars(args), model=model)
    assert data_config['input_size'] == (3, IMG_SIZE, IMG_SIZE)
    dataset_kwargs = dict(root=image_folder, class_map='', download=False, batch_size=args.batch_size,
                          input_img_mode='RGB', input_key=None, target_key=None, num_samples=None)
    dataset_train = create_dataset('', split='train', is_training=True, seed=args.seed, repeats=0.,
                                   **dataset_kwargs)
    dataset_eval = create_dataset('', split='validation', is_training=False, **dataset_kwargs)
    common_loader_kwargs = dict(
        mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem, img_dtype=torch.float32,
        device=device, distributed=False, use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        re_split=args.resplit, train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob, gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa,
        num_aug_repeats=0, num_aug_splits=0, interpolation=args.train_interpolation, num_workers=args.workers,
        worker_seeding=args.worker_seeding, **common_loader_kwargs)
    loader_eval = create_loader(
        dataset_eval, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], num_workers=args.workers, crop_pct=data_config['crop_pct'],
        **common_loader_kwargs)
    assert len(loader_train) == 4 and len(loader_eval) == 2

    task = ClassificationTask(model=model, criterion=LabelSmoothingCrossEntropy(smoothing=args.smoothing),
                              device=device, verbose=False)
    model = task.get_trainable_module()
    eval_model = task.get_eval_model()

    args.lr = args.lr_base * args.batch_size / args.lr_base_size  # train.py's linear scaling, one process
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults['momentum'] == 0.9 and not optimizer.defaults['nesterov']
    decay_groups = {g['weight_decay'] for g in optimizer.param_groups}
    assert decay_groups == {0., 1e-4}  # timm exempts BN and biases, as the release's decay_mult: 0 does

    saver = utils.CheckpointSaver(
        model=model, optimizer=optimizer, args=args, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path),
        decreasing=False, max_history=args.checkpoint_hist, task=task)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=False), updates_per_epoch=len(loader_train))
    assert num_epochs == 100

    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    losses = []
    for num_updates, (input, target) in enumerate(loader_train, start=1):
        assert input.shape == (BATCH_SIZE, 3, IMG_SIZE, IMG_SIZE)
        loss = task(input, target)['loss']
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        lr_scheduler.step_update(num_updates=num_updates)
    assert all(np.isfinite(losses))
    # every conv and fc kernel moved (BN scales near 1 may not: lr 0.0016 updates can round away in float32)
    unchanged = [k for k, v in model.state_dict().items() if v.dim() > 1 and torch.equal(initial[k], v)]
    assert not unchanged, unchanged

    metrics = validate(eval_model, loader_eval, nn.CrossEntropyLoss(), args)
    assert 0. <= metrics['top1'] <= metrics['top5'] == 100.  # 4 classes: the top 5 holds every label
    best_metric, best_epoch = saver.save_checkpoint(0, metric=metrics['top1'])
    assert (best_metric, best_epoch) == (metrics['top1'], 0)
    lr_scheduler.step(1, metrics['top1'])

    # validate.py --checkpoint: a fresh model loads the saved weights and computes the same logits
    reloaded = timm.create_model(args.model, num_classes=args.num_classes)
    load_checkpoint(reloaded, str(tmp_path / 'last.pth.tar'))
    probe = next(iter(loader_eval))[0]
    with torch.inference_mode():
        assert torch.equal(reloaded.eval()(probe), eval_model(probe))
    assert (tmp_path / 'checkpoint-0.pth.tar').is_file()

    # the paper's schedule: lr / 10 at epochs 30, 60, 90
    for epoch, scale in ((29, 1.), (30, .1), (59, .1), (60, .01), (90, .001)):
        lr_scheduler.step(epoch)
        assert optimizer.param_groups[0]['lr'] == pytest.approx(args.lr * scale)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_torchscript_as_train_py_builds_it():
    """train.py --torchscript: create_model(scriptable=True), then torch.jit.script."""
    args = recipe_args(torchscript=True, drop=0., drop_path=None, drop_block=None)
    model = create_train_model(args).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, IMG_SIZE, IMG_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-5)
