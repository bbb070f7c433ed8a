"""The caffemodel's own graph is the truth: each class of bad file that fuzzing found, rebuilt here as a mutant of a
release-format SKNet-50, is refused in one line naming the layers concerned; encodings Caffe itself writes convert.

Mutants change the embedded graph of the caffemodel (the release's layer definitions travel with the weights),
as a corrupt or edited download would; names, blobs and parameters are changed exactly as described.
"""
import numpy as np
import pytest
from safetensors.numpy import load_file

from converters.caffe.proto import LayerParameter, NetParameter, net_to_text, read_caffemodel
from converters.caffe.writer import insert_splits

CORRUPT = 'the file is corrupt or was edited; use the released file'
OTHER = "not the graph of the release's sknet50: check --model, or use the released file"


def _layer(net, name):
    return next(layer for layer in net.layer if layer.name == name)


def _mutant(caffemodel, tmp_path, mutate, name='mutant.caffemodel'):
    net = read_caffemodel(caffemodel)
    mutate(net)
    path = tmp_path / name
    path.write_bytes(net.SerializeToString())
    return path


def _args(caffemodel, out_dir):
    return caffemodel, '--model', 'sknet50', '--output', out_dir / 'out.safetensors'


@pytest.fixture(scope='module')
def converted(sknet50_caffemodel, tmp_path_factory):
    """The tensors convert-caffe makes of the unchanged caffemodel (the reference for accepted encodings)."""
    from converters.caffe.convert import InferenceGraph, caffe_state_dict, target_spec
    weights = read_caffemodel(sknet50_caffemodel)
    return caffe_state_dict(InferenceGraph(weights), weights, target_spec('sknet50'))


# -- a name that is not text ---------------------------------------------------------------------------------

@pytest.mark.parametrize('field, tag, layer', [
    ('name', 0x0a, 'conv3_2/B_fc1'), ('bottom[0]', 0x1a, 'conv3_2/B_fc1/bn'), ('top[0]', 0x22, 'conv3_2/B_fc1')])
def test_a_layer_string_that_is_not_utf8(field, tag, layer, sknet50_caffemodel, tmp_path, out_dir, refused):
    """Protobuf hands a proto2 string that is not UTF-8 over as bytes; it used to reach match_layer (TypeError)."""
    data = sknet50_caffemodel.read_bytes()
    encoded = bytes([tag, 13]) + b'conv3_2/B_fc1'  # LayerParameter.<field> (wire type 2, 13 bytes)
    assert data.count(encoded) == 1
    bad = tmp_path / 'bad.caffemodel'
    bad.write_bytes(data.replace(encoded, bytes([tag, 13]) + b'conv3_2/B_fc\xff'))
    index = [other.name for other in read_caffemodel(sknet50_caffemodel).layer].index(layer)
    err = refused(*_args(bad, out_dir))
    assert err == (f'convert-caffe: error: caffemodel {bad}: layer[{index}].{field} is not UTF-8 text '
                   f"(b'conv3_2/B_fc\\xff'): the file is corrupt; use the released file")


# -- names swapped relative to their places in the graph --------------------------------------------------

@pytest.mark.parametrize('first, second', [
    ('conv2_1/B_fc2', 'conv2_2/B_fc2'),  # attention fc, same shape in both units
    ('conv4_2/B_fc1', 'conv4_5/B_fc1'),
    ('conv3_2/3x3g32', 'conv3_3/3x3g32'),  # a 3x3 path, same shape in both units
    ('conv2_1/3x3g32', 'conv2_1/3x3g32d2'),  # the two paths of one unit: told apart by their dilation
    ('conv2_1/1x1_reduce', 'conv2_1/1x1_proj'),  # both read the unit's input: told apart by their width
])
def test_names_swapped_against_the_graph(first, second, sknet50_caffemodel, tmp_path, out_dir, refused):
    """Each layer keeps its place, parameters and blobs; only the names trade places. Looked up by name, the
    weights would silently land in the other unit or path."""
    def swap(net):
        a, b = _layer(net, first), _layer(net, second)
        a.name, b.name = second, first
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, swap), out_dir))
    assert err.startswith(f"convert-caffe: error: Convolution layer '{second}' stands where the release has "
                          f"'{first}' (it reads ")
    assert err.endswith(f"the file's layer names and graph disagree, so its weights would land in the wrong place; "
                        f'{CORRUPT}')


# -- a weightless layer rewired -------------------------------------------------------------------------------

def _relu_writes_its_own_blob(net):
    _layer(net, 'conv3_1/1x1_reduce/relu').top[0] = 'conv3_1/1x1_reduce/relu'  # read by nobody


def _relu_deleted(net):
    net.layer.remove(_layer(net, 'conv3_1/1x1_reduce/relu'))


def _relu_read_by_one_path_only(net):
    relu = _layer(net, 'conv3_1/1x1_reduce/relu')
    relu.top[0] = 'conv3_1/1x1_reduce/relu'
    _layer(net, 'conv3_1/3x3g32').bottom[0] = 'conv3_1/1x1_reduce/relu'


@pytest.mark.parametrize('rewire, layer', [
    (_relu_writes_its_own_blob, 'conv3_1/3x3g32'),
    (_relu_deleted, 'conv3_1/3x3g32'),
    (_relu_read_by_one_path_only, 'conv3_1/3x3g32d2'),
], ids=['relu top read by nobody', 'relu deleted', 'one path skips the relu'])
def test_a_rewired_relu(rewire, layer, sknet50_caffemodel, tmp_path, out_dir, refused):
    """Same blobs, another network: a path reads the BN's output before the ReLU."""
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, rewire), out_dir))
    assert err == (f"convert-caffe: error: Convolution layer '{layer}' reads 'conv3_1/1x1_reduce/bn' where the "
                   f"release's reads 'conv3_1/1x1_reduce/relu': the graph is wired differently; {OTHER} "
                   '(is it corrupt or edited?)')


def test_a_rewired_unit_output(sknet50_caffemodel, tmp_path, out_dir, refused):
    """The next unit reads the sum before the unit's ReLU."""
    def rewire(net):
        _layer(net, 'conv4_2/relu').top[0] = 'conv4_2/relu'
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, rewire), out_dir))
    assert "Convolution layer 'conv4_3/1x1_reduce' reads 'conv4_2' where the release's reads 'conv4_2/relu'" in err


# -- parameters that contradict the blobs -------------------------------------------------------------------

@pytest.mark.parametrize('layer, field, value, message', [
    ('classifier', 'inner_product_param.num_output', 10,
     "InnerProduct layer 'classifier': blob 0 has shape [1000, 2048] where its parameters (num_output 10, 2048 "
     "inputs) make it [10, 2048]"),
    ('conv3_2/3x3g32', 'convolution_param.group', 1,
     "Convolution layer 'conv3_2/3x3g32': blob 0 has shape [256, 8, 3, 3] where its parameters (num_output 256, "
     "256 input channels in 1 groups, kernel 3x3) make it [256, 256, 3, 3]"),
    ('conv5_1/1x1_increase', 'convolution_param.num_output', 1024,
     "Convolution layer 'conv5_1/1x1_increase': blob 0 has shape [2048, 1024, 1, 1] where its parameters "
     "(num_output 1024, 1024 input channels in 1 groups, kernel 1x1) make it [1024, 1024, 1, 1]"),
])
def test_parameters_that_contradict_the_blobs(layer, field, value, message, sknet50_caffemodel, tmp_path, out_dir,
                                              refused):
    def mutate(net):
        param, name = field.split('.')
        setattr(getattr(_layer(net, layer), param), name, value)
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, mutate), out_dir))
    assert err == f'convert-caffe: error: {message}; Caffe refuses this net (shape mismatch): {CORRUPT}'


def test_bias_term_without_its_blob(sknet50_caffemodel, tmp_path, out_dir, refused):
    def mutate(net):
        _layer(net, 'conv2_3/B_fc1').convolution_param.bias_term = True
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, mutate), out_dir))
    assert err == "convert-caffe: error: Convolution layer 'conv2_3/B_fc1' has 1 blobs; expected 2 (weights, bias)"


def test_a_consistent_layer_of_another_model(sknet50_caffemodel, tmp_path, out_dir, refused):
    """A 10-class classifier whose blobs agree with it: a fine net, but not the release's sknet50."""
    def ten_classes(net):
        classifier = _layer(net, 'classifier')
        classifier.inner_product_param.num_output = 10
        for blob in classifier.blobs:
            values = np.frombuffer(blob.data[0], '<f4').reshape(tuple(blob.shape.dim))[:10]
            blob.shape.dim[0] = 10
            blob.data[0] = values.tobytes()
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, ten_classes), out_dir))
    assert err == (f"convert-caffe: error: InnerProduct layer 'classifier' has num_output 10 where the release's "
                   f"'classifier' (sknet50's fc) has num_output 1000: {OTHER} (is it corrupt or edited?)")


# -- nets Caffe itself refuses --------------------------------------------------------------------------------

def _caffe_refuses(layer_type, layer, reason):
    return f"convert-caffe: error: {layer_type} layer '{layer}': Caffe refuses this net ({reason}); {CORRUPT}"


def test_a_top_produced_by_two_layers(sknet50_caffemodel, tmp_path, out_dir, refused):
    def mutate(net):  # the dilated path's BN writes the 3x3 path's BN output, not in place
        _layer(net, 'conv2_1/3x3g32d2/bn').top[0] = 'conv2_1/3x3g32/bn'
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, mutate), out_dir))
    assert err == _caffe_refuses('CuDNNBatchNorm', 'conv2_1/3x3g32d2/bn',
                                 "Top blob 'conv2_1/3x3g32/bn' produced by multiple sources.")


@pytest.mark.parametrize('field, value, reason', [
    ('pad', 1, 'With Global_pooling: true; only pad = 0 and stride = 1'),
    ('stride', 2, 'With Global_pooling: true; only pad = 0 and stride = 1'),
    ('kernel_size', 7, 'With Global_pooling: true Filter size cannot specified'),
])
def test_a_global_pool_with_a_window(field, value, reason, sknet50_caffemodel, tmp_path, out_dir, refused):
    def mutate(net):
        setattr(_layer(net, 'conv3_2/B_global_pool').pooling_param, field, value)
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, mutate), out_dir))
    assert err == _caffe_refuses('Pooling', 'conv3_2/B_global_pool', reason)


def test_a_layer_before_the_one_it_reads(sknet50_caffemodel, tmp_path, out_dir, refused):
    def mutate(net):
        layers = [LayerParameter() for _ in net.layer]
        for copy, layer in zip(layers, net.layer):
            copy.CopyFrom(layer)
        softmax = next(i for i, layer in enumerate(layers) if layer.name == 'conv2_2/B_softmax')
        layers.insert(softmax - 1, layers.pop(softmax))  # before its Reshape
        del net.layer[:]
        net.layer.extend(layers)
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, mutate), out_dir))
    assert err == _caffe_refuses('Softmax', 'conv2_2/B_softmax',
                                 "Unknown bottom blob 'conv2_2/B_re' (layer 'conv2_2/B_softmax', bottom index 0)")


def test_include_and_exclude_rules_together(sknet50_caffemodel, tmp_path, out_dir, refused):
    def mutate(net):
        layer = _layer(net, 'conv2_1/relu')
        layer.include.add(phase=1)
        layer.exclude.add(phase=0)
    err = refused(*_args(_mutant(sknet50_caffemodel, tmp_path, mutate), out_dir))
    assert err == _caffe_refuses('ReLU', 'conv2_1/relu', 'Specify either include rules or exclude rules; not both.')


# -- what Caffe itself writes, and deploy definitions: converted, to the same tensors -----------------------

def _same_tensors(path, converted):
    written = load_file(path)
    assert written.keys() == converted.keys()
    for key, value in converted.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)


def test_a_snapshot_with_caffes_split_layers(sknet50_caffemodel, converted, tmp_path, out_dir, convert_caffe):
    """Caffe saves the net it built, with a Split after every blob that several layers read (SENet's release
    caffemodels hold them: 'label_data_1_split', ..._0_split) and the data layer of the phase it trained in."""
    def snapshot(net):
        data = _layer(net, 'input')
        data.type = 'Data'  # a TRAIN-phase data layer, as in a training snapshot
        data.ClearField('input_param')
        data.include.add(phase=0)
        split = insert_splits(net)
        del net.layer[:]
        net.layer.extend(split.layer)
    path = _mutant(sknet50_caffemodel, tmp_path, snapshot)
    layers = read_caffemodel(path).layer
    # in each of the 16 units: its input, the reduced map and each path's output; then the logits and the label
    assert sum(layer.type == 'Split' for layer in layers) == 16 * 4 + 2
    assert any(layer.name == 'label_input_1_split' for layer in layers)
    code, out, err = convert_caffe(*_args(path, out_dir))
    assert code == 0, err
    _same_tensors(out_dir / 'out.safetensors', converted)


def test_a_deploy_prototxt(sknet50_caffemodel, converted, tmp_path, out_dir, convert_caffe):
    """A deploy definition: declared input, no label, loss or accuracy layers, and a Softmax 'prob' at the end."""
    net = read_caffemodel(sknet50_caffemodel)
    deploy = NetParameter(name='SKNet-50 deploy', input=['data'])
    for layer in net.layer:
        if layer.name not in ('input', 'loss', 'top-1', 'top-5'):
            copy = deploy.layer.add()
            copy.CopyFrom(layer)
            del copy.blobs[:]
    deploy.layer.add(name='prob', type='Softmax', bottom=['classifier'], top=['prob'])
    prototxt = tmp_path / 'deploy.prototxt'
    prototxt.write_text(net_to_text(deploy))
    code, out, err = convert_caffe(*_args(sknet50_caffemodel, out_dir), '--prototxt', prototxt)
    assert code == 0, err
    _same_tensors(out_dir / 'out.safetensors', converted)
