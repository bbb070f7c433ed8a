"""convert-caffe on release-format SKNet-50 / SKNet-101 caffemodels (random weights, both BN kinds), against
OpenCV's run of the same caffemodels, and the same through ``convert-caffe --verify``.

Each caffemodel is written once per session by ``converters.caffe.writer`` from a model with trained-looking BN
(``converters.caffe.demo.release_like_model``); OpenCV runs the graph each caffemodel embeds.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

import timm_sknet
from converters.caffe.proto import NetParameter, blob_array, net_to_text, read_caffemodel, read_prototxt
from converters.caffe.cli import main as convert_main
from converters.caffe.convert import InferenceGraph
from converters.caffe.demo import release_like_model
from converters.caffe import verify
from converters.caffe.verify import TOLERANCE, compare, generated_images, opencv_logits, timm_logits
from converters.caffe.writer import write_caffemodel

COMBOS = [('sknet50', 'cudnn'), ('sknet50', 'bvlc'), ('sknet101', 'cudnn'), ('sknet101', 'bvlc')]
PROVENANCE_KEYS = {
    'source_file', 'source_size', 'source_sha256', 'model_name', 'timm_sknet_version', 'timm_version',
    'torch_version'}
VERIFY_KEYS = {
    'verify_runtime', 'verify_images', 'verify_max_abs_diff', 'verify_max_rel_diff', 'verify_top5_agreement'}
# The release's avepool/7x7 needs 7x7 final maps, i.e. 224 input; two images keep SKNet-101 quick on 2 cores.
IMAGES = generated_images(2, 224, seed=7)


def run_convert(capsys, monkeypatch, *args):
    """convert-caffe in this process (torch is already imported); returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, 'argv', ['convert-caffe', *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        convert_main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope='module')
def release_files(tmp_path_factory):
    """(model_name, bn_style) -> (the model, its caffemodel); each built on first use, once per module.

    The caffemodel's prototxt lies beside it (same name, .prototxt).
    """
    out = tmp_path_factory.mktemp('release')
    models, files = {}, {}

    def get(model_name: str, bn_style: str):
        if model_name not in models:
            models[model_name] = release_like_model(model_name)
        if (model_name, bn_style) not in files:
            path = out / f'{model_name}_{bn_style}.caffemodel'
            write_caffemodel(models[model_name], path, path.with_suffix('.prototxt'), bn_style=bn_style)
            files[model_name, bn_style] = path
        return models[model_name], files[model_name, bn_style]
    return get


def test_generated_weights_look_trained(release_files):
    """Every BN has measured statistics and the SK attention selects: each converted tensor matters."""
    model, _ = release_files('sknet50', 'cudnn')
    for name, bn in model.named_modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            assert bn.running_mean.abs().min() > 0 and (bn.running_var - 1).abs().min() > 0, name
    selections = []
    hooks = [module.register_forward_hook(lambda module, args, weights: selections.append(weights[:, 0]))
             for module in model.modules() if isinstance(module, timm_sknet.SKAttention)]
    timm_logits(model, IMAGES, timm.data.resolve_data_config({}, model=model))
    for hook in hooks:
        hook.remove()
    spread = [float((w - 0.5).abs().mean()) for w in selections]
    assert len(spread) == 16 and 0.02 < min(spread) and max(spread) < 0.45  # neither flat nor saturated


@pytest.mark.parametrize('model_name, bn_style', COMBOS)
def test_converted_model_reproduces_the_caffemodel_in_opencv(
        model_name, bn_style, release_files, tmp_path, capsys, monkeypatch):
    model, caffemodel = release_files(model_name, bn_style)
    output = tmp_path / 'converted.safetensors'
    code, out, err = run_convert(capsys, monkeypatch, caffemodel, '--model', model_name, '--output', output)
    assert code == 0, err
    assert f'tensors of {model_name}' in out

    # convert(write(model)) == model: every tensor filled, BN num_batches_tracked at its default
    converted = load_file(output)
    expected = model.state_dict()
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        if key.endswith('num_batches_tracked'):
            assert converted[key] == 0
        elif bn_style == 'cudnn' or 'running_' not in key:
            np.testing.assert_array_equal(converted[key], value.numpy(), err_msg=key)
        else:  # BVLC stores mean * s and var * s
            np.testing.assert_allclose(converted[key], value.numpy(), rtol=1e-6, atol=1e-7, err_msg=key)
    with safe_open(output, 'np') as f:
        assert f.metadata().keys() == PROVENANCE_KEYS

    # the converted model on timm's data config == the caffemodel in OpenCV on the release's convention
    weights = read_caffemodel(caffemodel)
    reference, runtime = opencv_logits(InferenceGraph(weights), weights, IMAGES)
    target = timm.create_model(model_name)
    target.load_state_dict({key: torch.from_numpy(value) for key, value in converted.items()})
    logits = timm_logits(target, IMAGES, timm.data.resolve_data_config({}, model=target))
    result = compare(reference, logits)
    assert runtime.startswith('opencv ')
    assert result.max_rel_diff <= TOLERANCE, result
    assert (np.argsort(-reference)[:, :5] == np.argsort(-logits)[:, :5]).all()


def test_verify_cli_on_sknet101(release_files, tmp_path):
    """The installed entry point, as a user runs it, on the released format (CuDNNBatchNorm)."""
    _, caffemodel = release_files('sknet101', 'cudnn')
    output = tmp_path / 'sknet101.safetensors'
    script = Path(sys.executable).parent / 'convert-caffe'
    proc = subprocess.run(
        [str(script), str(caffemodel), '--model', 'sknet101', '--output', str(output), '--verify'],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'verify: opencv' in proc.stdout and 'same top-5 classes on 2/2 images' in proc.stdout
    with safe_open(output, 'np') as f:
        metadata = f.metadata()
    assert metadata.keys() == PROVENANCE_KEYS | VERIFY_KEYS
    assert metadata['verify_runtime'].startswith('opencv 4.')
    assert metadata['verify_images'] == '2' and metadata['verify_top5_agreement'] == '2/2'
    assert float(metadata['verify_max_rel_diff']) <= TOLERANCE
    assert metadata['model_name'] == 'sknet101' and metadata['source_size'] == str(caffemodel.stat().st_size)


def test_conversion_without_verify_imports_neither_torch_nor_timm(release_files, tmp_path):
    """The installed entry point as a user runs it: torch's import alone would take more memory than converting."""
    _, caffemodel = release_files('sknet50', 'cudnn')
    output = tmp_path / 'sknet50.safetensors'
    script = Path(sys.executable).parent / 'convert-caffe'
    proc = subprocess.run(
        [sys.executable, '-X', 'importtime', str(script), str(caffemodel), '--model', 'sknet50', '--output',
         str(output)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit('|', 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith('import time:')}
    assert {'numpy', 'safetensors', 'converters.caffe.convert', 'timm_sknet.io.errors'} <= imported  # the log is complete
    assert not {name for name in imported if name.split('.')[0] in ('torch', 'timm', 'torchvision', 'cv2')}
    with safe_open(output, 'np') as f:
        assert f.metadata()['timm_version'] == timm.__version__
        assert torch.__version__.startswith(f.metadata()['torch_version'])  # the local label (+cu...) aside
    np.testing.assert_array_equal(
        load_file(output)['conv1.weight'], release_files('sknet50', 'cudnn')[0].conv1.weight.detach().numpy())


def test_verify_on_image_files_with_bvlc_batchnorm(release_files, tmp_path, capsys, monkeypatch):
    import cv2  # a test dependency (opencv-python-headless), as for --verify
    _, caffemodel = release_files('sknet50', 'bvlc')
    image = tmp_path / 'photo.png'
    cv2.imwrite(str(image), generated_images(1, 300, seed=11)[0][:, :260])  # not square: resize + centre crop
    output = tmp_path / 'out.safetensors'
    code, out, err = run_convert(
        capsys, monkeypatch, caffemodel, '--model', 'sknet50', '--output', output, '--verify', '--image', image)
    assert code == 0, err
    assert 'vs timm on photo.png' in out
    with safe_open(output, 'np') as f:
        assert f.metadata()['verify_images'] == '1'


def test_verify_fails_when_the_input_convention_is_not_folded(release_files):
    """Negative control: the tolerance separates a right conversion from one that skips bgr_to_rgb."""
    model, caffemodel = release_files('sknet50', 'cudnn')
    weights = read_caffemodel(caffemodel)
    reference, _ = opencv_logits(InferenceGraph(weights), weights, IMAGES)
    data_config = timm.data.resolve_data_config({}, model=model)
    assert compare(reference, timm_logits(model, IMAGES, data_config)).ok
    unfolded = timm.create_model('sknet50')
    unfolded.load_state_dict(model.state_dict())
    with torch.no_grad():
        unfolded.conv1.weight.copy_(model.conv1.weight.flip(1))
    result = compare(reference, timm_logits(unfolded, IMAGES, data_config))
    assert not result.ok and result.max_rel_diff > 10 * TOLERANCE


def test_a_layer_the_weights_do_not_reveal_is_refused_by_the_graph_check(release_files, tmp_path, capsys,
                                                                          monkeypatch):
    """A prototxt with an extra ReLU has the same weights but computes something else: refused before --verify."""
    _, caffemodel = release_files('sknet50', 'cudnn')
    net = NetParameter()
    for layer in read_prototxt(caffemodel.with_suffix('.prototxt')).layer:
        net.layer.add().CopyFrom(layer)
        if layer.name == 'conv3_2/1x1_increase/bn':
            net.layer.add(name='conv3_2/1x1_increase/relu', type='ReLU', bottom=layer.top, top=layer.top)
    prototxt = tmp_path / 'modified.prototxt'
    prototxt.write_text(net_to_text(net))
    output = tmp_path / 'out.safetensors'
    code, out, err = run_convert(capsys, monkeypatch, caffemodel, '--model', 'sknet50', '--output', output,
                                 '--prototxt', prototxt, '--verify')
    assert code != 0 and 'verify:' not in out
    assert err.startswith(f'convert-caffe: error: --prototxt {prototxt} disagrees with the caffemodel, which '
                          'converts with the layers it embeds')
    assert ("ReLU layer 'conv3_2/1x1_increase/relu' (reading 'conv3_2/1x1_increase/bn') has no counterpart in the "
            'release graph') in err
    assert 'Traceback' not in err and list(tmp_path.iterdir()) == [prototxt]


def test_failed_verification_writes_nothing(release_files, tmp_path, capsys, monkeypatch):
    """With no tolerance at all, the real float32 differences between OpenCV and timm fail --verify."""
    _, caffemodel = release_files('sknet50', 'bvlc')
    monkeypatch.setattr(verify, 'TOLERANCE', 0.)
    code, out, err = run_convert(capsys, monkeypatch, caffemodel, '--model', 'sknet50', '--output',
                                 tmp_path / 'out.safetensors', '--verify')
    assert code != 0 and 'verify: opencv' in out
    assert err.startswith('convert-caffe: error: verification failed: relative logit error ')
    assert err.strip().endswith('nothing written') and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_batchnorm_eps_is_folded_into_the_variance(release_files, tmp_path, capsys, monkeypatch):
    model, caffemodel = release_files('sknet50', 'cudnn')
    net = read_caffemodel(caffemodel)
    for layer in net.layer:
        if layer.type == 'CuDNNBatchNorm':
            layer.batch_norm_param.eps = 1e-3
    modified = tmp_path / 'eps.caffemodel'
    modified.write_bytes(net.SerializeToString())
    output = tmp_path / 'out.safetensors'
    code, _, err = run_convert(capsys, monkeypatch, modified, '--model', 'sknet50', '--output', output, '--verify')
    assert code == 0, err
    var = model.bn1.running_var.numpy()
    np.testing.assert_allclose(load_file(output)['bn1.running_var'], var + np.float32(1e-3) - 1e-5, rtol=1e-6)


@pytest.mark.parametrize('bn_style, bn_type, eps_field', [
    ('cudnn', 'CuDNNBatchNorm', 'batch_norm_param'), ('bvlc', 'BatchNorm', 'bvlc_batch_norm_param')])
def test_cudnn_batchnorm_eps_has_the_release_layers_floor(
        bn_style, bn_type, eps_field, release_files, tmp_path, capsys, monkeypatch):
    """The release's CuDNNBatchNorm computes with max(eps, 1e-5): a file whose layers say 1e-6 converts to the
    same tensors as one whose layers say 1e-5. BVLC BatchNorm computes with its own eps, 1e-6 included."""
    _, caffemodel = release_files('sknet50', bn_style)
    converted = {}
    for eps in (1e-5, 1e-6):
        net = read_caffemodel(caffemodel)
        for layer in net.layer:
            if layer.type == bn_type:
                getattr(layer, eps_field).eps = eps
        source, output = tmp_path / f'eps{eps:g}.caffemodel', tmp_path / f'eps{eps:g}.safetensors'
        source.write_bytes(net.SerializeToString())
        code, _, err = run_convert(capsys, monkeypatch, source, '--model', 'sknet50', '--output', output)
        assert code == 0, err
        converted[eps] = load_file(output)
    variances = [key for key in converted[1e-5] if key.endswith('running_var')]
    assert len(variances) == 1 + 16 * 5 + 4  # the stem, five BNs per SK unit, a projection per stage
    if bn_style == 'cudnn':
        for key, value in converted[1e-5].items():
            np.testing.assert_array_equal(converted[1e-6][key], value, err_msg=key)
    else:
        for key in variances:
            np.testing.assert_allclose(converted[1e-6][key], converted[1e-5][key] + (1e-6 - 1e-5), rtol=1e-6)


def test_caffemodel_without_layer_definitions_needs_the_prototxt(release_files, tmp_path, capsys, monkeypatch):
    model, caffemodel = release_files('sknet50', 'cudnn')
    stripped = NetParameter()
    for layer in read_caffemodel(caffemodel).layer:
        stripped.layer.add(name=layer.name).blobs.extend(layer.blobs)
    weights_only = tmp_path / 'weights_only.caffemodel'
    weights_only.write_bytes(stripped.SerializeToString())
    output = tmp_path / 'out.safetensors'
    args = (weights_only, '--model', 'sknet50', '--output', output)
    code, _, err = run_convert(capsys, monkeypatch, *args)
    assert code != 0 and 'holds weights but no layer definitions; pass its --prototxt' in err
    code, _, err = run_convert(capsys, monkeypatch, *args, '--prototxt', caffemodel.with_suffix('.prototxt'))
    assert code == 0, err
    np.testing.assert_array_equal(load_file(output)['layer4.2.conv2.attn.fc_select.weight'],
                                  model.layer4[2].conv2.attn.fc_select.weight.detach().numpy())


def test_attention_slices_feeding_the_wrong_paths_are_refused(release_files, tmp_path, capsys, monkeypatch):
    _, caffemodel = release_files('sknet50', 'cudnn')
    net = read_prototxt(caffemodel.with_suffix('.prototxt'))
    for layer in net.layer:
        if layer.name == 'conv4_3/B_slice':
            layer.top[0], layer.top[1] = layer.top[1], layer.top[0]
    prototxt = tmp_path / 'swapped.prototxt'
    prototxt.write_text(net_to_text(net))
    code, _, err = run_convert(capsys, monkeypatch, caffemodel, '--model', 'sknet50', '--output',
                               tmp_path / 'out.safetensors', '--prototxt', prototxt)
    assert code != 0
    # with the tops swapped, each slice's Reshape stands in the other's place, and the path weights follow them
    assert ("Reshape layer 'conv4_3/B_w0/reshape' reads 'conv4_3/B_slice0' (in the place of the release's "
            "'conv4_3/B_slice1') where the release's reads 'conv4_3/B_slice0'") in err


def test_sknet101_fuse_widths_are_read_from_the_blobs(release_files):
    _, caffemodel = release_files('sknet101', 'cudnn')
    layers = {layer.name: layer for layer in read_caffemodel(caffemodel).layer}
    assert [f'conv4_{u}/1x1_reduce' in layers for u in (1, 23, 24)] == [True, True, False]
    widths = [blob_array(layers[f'conv{s}_1/B_fc1'].blobs[0], 'x').shape[0] for s in (2, 3, 4, 5)]
    assert widths == [32, 16, 32, 64]
