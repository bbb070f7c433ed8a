"""Bad input to convert-caffe: one line naming the problem, a non-zero exit, no traceback, nothing written."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import timm_sknet  # noqa: F401  (registers the models)
from converters.caffe.proto import NetParameter, array_blob, net_to_text, read_caffemodel, read_prototxt
from converters.caffe.cli import main as convert_main

CONVERT_CAFFE = Path(sys.executable).parent / 'convert-caffe'


def convert_args(caffemodel, out_dir, model='sknet50'):
    return caffemodel, '--model', model, '--output', out_dir / 'out.safetensors'


def test_missing_caffemodel(tmp_path, out_dir, refused):
    err = refused(*convert_args(tmp_path / 'nope.caffemodel', out_dir))
    assert err == f'convert-caffe: error: caffemodel {tmp_path / "nope.caffemodel"} does not exist'


def test_empty_caffemodel(tmp_path, out_dir, refused):
    empty = tmp_path / 'empty.caffemodel'
    empty.touch()
    assert refused(*convert_args(empty, out_dir)).endswith('is empty')


def test_random_bytes(tmp_path, out_dir, refused):
    noise = tmp_path / 'noise.caffemodel'
    noise.write_bytes(np.random.default_rng(1).bytes(1 << 16))
    err = refused(*convert_args(noise, out_dir))
    assert err.endswith('is truncated or not a Caffe model (protobuf decoding failed)')


def test_truncated_caffemodel(sknet50_caffemodel, tmp_path, out_dir, refused):
    truncated = tmp_path / 'truncated.caffemodel'
    data = sknet50_caffemodel.read_bytes()
    truncated.write_bytes(data[:len(data) * 3 // 5])
    err = refused(*convert_args(truncated, out_dir))
    assert err.endswith('is truncated or not a Caffe model (protobuf decoding failed)')


def test_caffemodel_of_another_architecture(tmp_path, out_dir, refused):
    # the first layers of a Caffe ResNet-50 (MSRA release naming)
    net = NetParameter(name='ResNet-50')
    net.layer.add(name='input', type='Input', top=['data']).input_param.shape.add().dim.extend((1, 3, 224, 224))
    conv = net.layer.add(name='conv1', type='Convolution', bottom=['data'], top=['conv1'])
    conv.convolution_param.num_output = 64
    conv.blobs.extend([array_blob(np.ones((64, 3, 7, 7), np.float32)), array_blob(np.zeros(64, np.float32))])
    net.layer.add(name='bn_conv1', type='BatchNorm', bottom=['conv1'], top=['conv1'])
    resnet = tmp_path / 'ResNet-50-model.caffemodel'
    resnet.write_bytes(net.SerializeToString())
    err = refused(*convert_args(resnet, out_dir))
    assert 'no single stem convolution conv1/7x7_s2' in err and 'not an SKNet of the Caffe release' in err


def test_model_mismatch(sknet50_caffemodel, out_dir, refused):
    err = refused(*convert_args(sknet50_caffemodel, out_dir, model='sknet101'))
    assert err == ("convert-caffe: error: the caffemodel's stages have 3/4/6/3 units, sknet101's 3/4/23/3: "
                   'it is another model (--model sknet101 is wrong?)')


def test_unknown_model_name(sknet50_caffemodel, out_dir, capsys, monkeypatch):
    args = convert_args(sknet50_caffemodel, out_dir, 'resnet50')
    monkeypatch.setattr(sys, 'argv', ['convert-caffe', *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        convert_main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'Traceback' not in err and list(out_dir.iterdir()) == []
    assert err.splitlines()[-1] == (
        "convert-caffe: error: argument --model: invalid choice: 'resnet50' (choose from 'sknet101', 'sknet50')")


@pytest.mark.parametrize('bad_value', [np.nan, np.inf])
def test_non_finite_weights(bad_value, sknet50_caffemodel, tmp_path, out_dir, refused):
    net = read_caffemodel(sknet50_caffemodel)
    layer = next(layer for layer in net.layer if layer.name == 'conv4_2/B_fc1')
    weights = np.frombuffer(layer.blobs[0].data[0], '<f4').copy()
    weights[[3, 50]] = bad_value
    layer.blobs[0].data[0] = weights.tobytes()
    corrupt = tmp_path / 'corrupt.caffemodel'
    corrupt.write_bytes(net.SerializeToString())
    err = refused(*convert_args(corrupt, out_dir))
    assert err.endswith("blob 0 of layer 'conv4_2/B_fc1' holds 2 NaN/Inf values: the caffemodel is corrupt")


def test_existing_output_is_kept_without_force(sknet50_caffemodel, tmp_path, capsys, monkeypatch):
    existing = tmp_path / 'existing.safetensors'
    existing.write_bytes(b'keep me')
    monkeypatch.setattr(sys, 'argv', ['convert-caffe', str(sknet50_caffemodel), '--model', 'sknet50',
                                      '--output', str(existing)])
    with pytest.raises(SystemExit) as exit_info:
        convert_main()
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and 'Traceback' not in err
    assert err.strip() == f'convert-caffe: error: {existing} already exists; pass --force to overwrite it'
    assert existing.read_bytes() == b'keep me'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['existing.safetensors']

    monkeypatch.setattr(sys, 'argv', sys.argv + ['--force'])
    with pytest.raises(SystemExit) as exit_info:
        convert_main()
    assert exit_info.value.code == 0 and existing.stat().st_size > 100_000_000


def test_missing_output_folder(sknet50_caffemodel, tmp_path, out_dir, refused):
    err = refused(sknet50_caffemodel, '--model', 'sknet50',
                  '--output', out_dir / 'sub' / 'out.safetensors')
    assert err.endswith('does not exist; create it first')


def test_image_without_verify(sknet50_caffemodel, out_dir, refused):
    err = refused(*convert_args(sknet50_caffemodel, out_dir), '--image', 'x.png')
    assert err.endswith('--image only has an effect with --verify')


def _truncated_jpeg(path: Path) -> None:
    """Half of a JPEG: OpenCV's reader gives the top rows and grey below them, with only libjpeg's warning."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(path.with_suffix(
        '.png'))
    with Image.open(path.with_suffix('.png')) as image:
        image.save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _not_an_image(path: Path) -> None:
    path.write_text('not an image')


@pytest.mark.parametrize('make, says', [
    (lambda path: None, 'does not exist'),
    (Path.mkdir, 'is a directory; give the --image file itself'),
    (Path.touch, 'is empty'),
    (_not_an_image, 'is not an image file PIL can read; pass a JPEG, PNG or other image'),
    (_truncated_jpeg, 'does not decode completely (OSError: image file is truncated'),
])
def test_verify_image_that_does_not_decode_whole_is_refused_before_any_work(sknet50_caffemodel, tmp_path, out_dir,
                                                                            make, says):
    """As validate refuses it, and before the caffemodel is read: nothing is converted, no OpenCV warning."""
    image = tmp_path / 'image.jpg'
    make(image)
    proc = subprocess.run([str(CONVERT_CAFFE), *map(str, convert_args(sknet50_caffemodel, out_dir)), '--verify',
                           '--image', str(image)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ''  # the conversion's own line never came
    assert proc.stderr.startswith(f'convert-caffe: error: --image {image} {says}') and proc.stderr.count('\n') == 1
    assert list(out_dir.iterdir()) == []


def test_verify_without_opencv_names_the_extra(sknet50_caffemodel, out_dir, monkeypatch, refused):
    monkeypatch.setitem(sys.modules, 'cv2', None)  # what an environment without opencv looks like to import
    err = refused(*convert_args(sknet50_caffemodel, out_dir), '--verify')
    assert err == "convert-caffe: error: cv2 is not installed; install it with: pip install 'timm-sknet[verify]'"


def _layer(net, name):
    return next(layer for layer in net.layer if layer.name == name)


def _set(name, path, value):
    """A mutation of the release graph: layer ``name``'s field at dotted ``path`` becomes ``value``."""
    def mutate(net):
        *parents, field = path.split('.')
        message = _layer(net, name)
        for parent in parents:
            message = getattr(message, parent)
        if isinstance(value, list):
            del getattr(message, field)[:]
            getattr(message, field).extend(value)
        else:
            setattr(message, field, value)
    return mutate


GRAPH_CHANGES = {
    'eltwise product': (_set('conv2_2', 'eltwise_param.operation', 0),
                        "Eltwise layer 'conv2_2' has operation PROD where the release's 'conv2_2' has operation SUM"),
    'leaky relu': (_set('conv3_1/relu', 'relu_param.negative_slope', 0.1),
                   "ReLU layer 'conv3_1/relu' has negative_slope 0.1 where the release's 'conv3_1/relu' has "
                   'negative_slope 0'),
    'timm stem pool': (_set('pool1/3x3_s2', 'pooling_param.pad', 1),
                       "Pooling layer 'pool1/3x3_s2' has pad (1, 1) where the release's 'pool1/3x3_s2' has pad (0, 0)"),
    'other dilation': (_set('conv3_1/3x3g32d2', 'convolution_param.dilation', [3]),
                       "Convolution layer 'conv3_1/3x3g32d2' has dilation (3, 3) where the release's "
                       "'conv3_1/3x3g32d2' (sknet50's layer2.0.conv2.paths.1.conv) has dilation (2, 2)"),
    'foreign layer type': (_set('conv2_1/relu', 'type', 'PReLU'), "PReLU layer 'conv2_1/relu' is not part of"),
    'channel-major attention': (_set('conv5_1/B_re', 'reshape_param.shape.dim', [0, -1, 2, 0]),
                                "Reshape layer 'conv5_1/B_re' has shape (0, -1, 2, 0) where the release's "
                                "'conv5_1/B_re' has shape (0, 2, -1, 0)"),
    'bn kind': (_set('conv4_2/B_fc1/bn', 'type', 'BatchNorm'),
                "BatchNorm layer 'conv4_2/B_fc1/bn' has 4 blobs; expected 3 (mean * s, variance * s, s)"),
    # a prototxt naming a layer the caffemodel does not hold is the prototxt's fault (test_convert_diagnoses.py has
    # the same rename inside the caffemodel: the graph check's message)
    'unknown conv': (_set('conv2_3/1x1_increase', 'name', 'conv2_3/1x1_expand'),
                     "1 of its layers with weights have none in the caffemodel (first: 'conv2_3/1x1_expand') and 1 of "
                     "the caffemodel's layers are not in it (first: 'conv2_3/1x1_increase')"),
}


@pytest.mark.parametrize('change', GRAPH_CHANGES, ids=list(GRAPH_CHANGES))
def test_graphs_that_differ_from_the_release(change, sknet50_caffemodel, tmp_path, out_dir, refused):
    mutate, message = GRAPH_CHANGES[change]
    net = read_prototxt(sknet50_caffemodel.with_suffix('.prototxt'))
    mutate(net)
    prototxt = tmp_path / 'changed.prototxt'
    prototxt.write_text(net_to_text(net))
    err = refused(*convert_args(sknet50_caffemodel, out_dir), '--prototxt', prototxt)
    assert message in err
    assert f'--prototxt {prototxt} ' in err  # the caffemodel converts with its own layers: the prototxt is named


def test_weights_outside_the_graph(sknet50_caffemodel, tmp_path, out_dir, refused):
    net = read_caffemodel(sknet50_caffemodel)
    net.layer.add(name='aux_classifier', type='InnerProduct').blobs.append(array_blob(np.ones((10, 4), np.float32)))
    extra = tmp_path / 'extra.caffemodel'
    extra.write_bytes(net.SerializeToString())
    err = refused(*convert_args(extra, out_dir))
    assert "1 layers with weights are not part of the SKNet graph, e.g. 'aux_classifier'" in err
