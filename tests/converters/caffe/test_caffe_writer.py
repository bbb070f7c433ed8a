"""The caffemodel writer reproduces the release's SKNet-50 definition layer by layer, in both BN styles."""
import numpy as np
import pytest
import timm
from google.protobuf import text_format

import timm_sknet  # noqa: F401  (registers the models)
from converters.caffe.proto import blob_array, read_caffemodel, read_prototxt
from converters.caffe.writer import BVLC_SCALE_FACTOR, release_net, write_caffemodel


@pytest.fixture(scope='module')
def sknet50():
    return timm.create_model('sknet50').eval()


@pytest.fixture(scope='module')
def written(sknet50, tmp_path_factory):
    out = tmp_path_factory.mktemp('writer')
    write_caffemodel(sknet50, out / 'sknet50.caffemodel', out / 'sknet50.prototxt')
    return out / 'sknet50.caffemodel', out / 'sknet50.prototxt'


def _conv_params(layer):
    return text_format.MessageToString(layer.convolution_param, as_one_line=True)


def test_sknet50_prototxt_matches_the_release_layer_by_layer(written, shared_dir):
    ours = read_prototxt(written[1])
    release = read_prototxt(shared_dir / 'fixtures' / 'sknet50.prototxt')
    assert ours.name == release.name
    assert [layer.name for layer in ours.layer] == [layer.name for layer in release.layer]
    for mine, theirs in zip(ours.layer, release.layer):
        assert (mine.type, list(mine.bottom), list(mine.top)) == (theirs.type, list(theirs.bottom), list(theirs.top)), \
            mine.name
        assert _conv_params(mine) == _conv_params(theirs), mine.name
        # everything else too: param specs, fillers, BN, pooling, reshape, slice, scale, accuracy parameters
        assert mine == theirs, mine.name


def test_caffemodel_is_the_prototxt_plus_blobs(written):
    model, prototxt = read_caffemodel(written[0]), read_prototxt(written[1])
    for layer in model.layer:
        del layer.blobs[:]
    assert model == prototxt
    assert not any(len(layer.blobs) for layer in prototxt.layer)


def test_cudnn_batchnorm_blobs_are_scale_bias_mean_var(sknet50, written):
    layers = {layer.name: layer for layer in read_caffemodel(written[0]).layer}
    bn = sknet50.layer2[0].conv2.attn.bn
    blobs = [blob_array(b, 'x') for b in layers['conv3_1/B_fc1/bn'].blobs]
    assert [b.shape for b in blobs] == [(1, 32, 1, 1)] * 4
    for blob, tensor in zip(blobs, (bn.weight, bn.bias, bn.running_mean, bn.running_var)):
        np.testing.assert_array_equal(blob.reshape(-1), tensor.detach().numpy())


def test_conv1_is_written_in_bgr_order(sknet50, written):
    conv1 = next(layer for layer in read_caffemodel(written[0]).layer if layer.name == 'conv1/7x7_s2')
    np.testing.assert_array_equal(blob_array(conv1.blobs[0], 'x'), sknet50.conv1.weight.detach().numpy()[:, ::-1])


def test_bvlc_style_replaces_each_cudnn_batchnorm_by_batchnorm_and_scale(sknet50):
    cudnn, bvlc = release_net(sknet50, 'cudnn'), release_net(sknet50, 'bvlc')
    bvlc_layers = {layer.name: layer for layer in bvlc.layer}
    cudnn_bns = [layer for layer in cudnn.layer if layer.type == 'CuDNNBatchNorm']
    assert len(bvlc.layer) == len(cudnn.layer) + len(cudnn_bns)
    for layer in cudnn_bns:
        bn, scale = bvlc_layers[layer.name], bvlc_layers[f'{layer.name}/scale']
        assert (bn.type, list(bn.bottom), list(bn.top)) == ('BatchNorm', list(layer.bottom), list(layer.top))
        assert (scale.type, list(scale.bottom), list(scale.top)) == ('Scale', list(layer.top), list(layer.top))
        assert scale.scale_param.bias_term and len(scale.blobs) == 2
        mean_s, var_s, s = (blob_array(b, 'x') for b in bn.blobs)
        assert s.tolist() == [np.float32(BVLC_SCALE_FACTOR)]
        np.testing.assert_allclose(mean_s / s, blob_array(layer.blobs[2], 'x').reshape(-1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(var_s / s, blob_array(layer.blobs[3], 'x').reshape(-1), rtol=1e-6)
    others = [(layer.name, layer.type, list(layer.bottom), list(layer.top)) for layer in cudnn.layer
              if layer.type != 'CuDNNBatchNorm']
    assert others == [(layer.name, layer.type, list(layer.bottom), list(layer.top)) for layer in bvlc.layer
                      if layer.type not in ('BatchNorm', 'Scale') or len(layer.bottom) == 2]


@pytest.mark.parametrize('model_name', ['sk_resnext50_32x4d', 'sk_resnet18'])
def test_models_outside_the_release_layout_are_refused(model_name):
    with pytest.raises(ValueError, match='release layout'):
        release_net(timm.create_model(model_name, device='meta'))


def test_unknown_bn_style_is_refused(sknet50):
    with pytest.raises(ValueError, match="bn_style must be 'cudnn' or 'bvlc'"):
        release_net(sknet50, 'frozen')
