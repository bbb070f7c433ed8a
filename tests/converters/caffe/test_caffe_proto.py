"""The run-time Caffe schema: release prototxt, blob encodings, forks' fields, legacy and broken files."""
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from converters.caffe.proto import (
    BlobProto, LayerParameter, NetParameter, array_blob, blob_array, read_caffemodel, read_prototxt)
from timm_sknet.io.errors import UserError


def _varint(value: int) -> bytes:
    out = b''
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    if wire_type == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire_type) + payload


def test_schema_is_built_from_descriptors_not_generated_code():
    from converters.caffe import proto as caffe_proto
    assert isinstance(caffe_proto._file_descriptor(), descriptor_pb2.FileDescriptorProto)
    assert NetParameter.DESCRIPTOR.fields_by_name['layer'].number == 100
    assert LayerParameter.DESCRIPTOR.fields_by_name['batch_norm_param'].number == 200


def test_release_prototxt_parses(shared_dir):
    net = read_prototxt(shared_dir / 'fixtures' / 'sknet50.prototxt')
    layers = {layer.name: layer for layer in net.layer}
    assert net.name == 'sknet50_basic' and len(net.layer) == 450
    bn = layers['conv1/7x7_s2/bn']
    assert bn.type == 'CuDNNBatchNorm' and bn.batch_norm_param.momentum == pytest.approx(0.95)
    assert bn.batch_norm_param.eps == pytest.approx(1e-5)  # the release leaves the default
    d2 = layers['conv2_1/3x3g32d2'].convolution_param
    assert (list(d2.dilation), list(d2.pad), d2.group) == ([2], [2], 32)
    assert list(layers['conv2_1/B_re'].reshape_param.shape.dim) == [0, 2, -1, 0]
    pool = layers['pool1/3x3_s2'].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride, pool.pad, pool.ceil_mode) == (pool.MAX, 3, 2, 0, True)


def test_packed_floats_come_back_as_an_array_of_the_blob_shape():
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) - 7.5
    blob = BlobProto.FromString(array_blob(values).SerializeToString())
    np.testing.assert_array_equal(blob_array(blob, 'x'), values)


def test_unpacked_floats_and_doubles_are_read_too():
    shape = _field(7, 2, _field(1, 0, _varint(3)))
    unpacked = b''.join(_field(5, 5, struct.pack('<f', v)) for v in (1.5, -2.0, 3.25))
    np.testing.assert_array_equal(blob_array(BlobProto.FromString(shape + unpacked), 'x'), [1.5, -2.0, 3.25])
    doubles = _field(8, 2, struct.pack('<3d', 0.5, 1e-3, -4.0))
    np.testing.assert_array_equal(
        blob_array(BlobProto.FromString(shape + doubles), 'x'), np.array([0.5, 1e-3, -4.0], np.float32))


def test_legacy_4d_blob_shape():
    legacy = BlobProto(num=1, channels=1, height=2, width=3)
    legacy.data.append(np.arange(6, dtype='<f4').tobytes())
    assert blob_array(legacy, 'x').shape == (1, 1, 2, 3)


def test_blob_with_too_few_values_is_refused():
    blob = array_blob(np.zeros((4, 4), np.float32))
    blob.data[0] = blob.data[0][:-4]
    with pytest.raises(UserError, match='holds 15 values for shape'):
        blob_array(blob, "blob 0 of layer 'x'")


def test_field_200_of_other_forks_and_unknown_fields_do_not_break_parsing(tmp_path):
    # SSD's annotated_data_param is field 200 too: {batch_sampler = 1 (message), label_map_file = 2, anno_type = 3}
    ssd = _field(1, 2, _field(1, 0, _varint(1))) + _field(2, 2, b'labelmap.prototxt') + _field(3, 0, _varint(0))
    layer = LayerParameter(name='data', type='AnnotatedData', top=['data']).SerializeToString()
    layer += _field(200, 2, ssd) + _field(12345, 2, b'a future field')
    path = tmp_path / 'ssd.caffemodel'
    path.write_bytes(_field(1, 2, b'ssd') + _field(100, 2, layer))
    net = read_caffemodel(path)
    assert net.layer[0].name == 'data' and net.layer[0].type == 'AnnotatedData'
    assert net.SerializeToString() == path.read_bytes()  # unknown content is kept, not mangled


def test_prototxt_skips_fields_the_schema_does_not_declare(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text('layer { name: "d" type: "Data" data_param { source: "lmdb" batch_size: 2 } top: "data" }')
    assert read_prototxt(path).layer[0].top == ['data']


def test_legacy_v1_layers_are_refused_with_the_upgrade_tool_named(tmp_path):
    path = tmp_path / 'v1.caffemodel'
    path.write_bytes(_field(1, 2, b'old') + _field(2, 2, _field(4, 2, b'conv1')))
    with pytest.raises(UserError, match="legacy V1 'layers' format; upgrade it with Caffe's upgrade_net_proto"):
        read_caffemodel(path)


@pytest.mark.parametrize('content, message', [
    (None, 'does not exist'),
    (b'', 'is empty'),
    (np.random.default_rng(0).bytes(4096), 'truncated or not a Caffe model'),
    (b'\x0a\x03abc', 'holds no layers'),
])
def test_unreadable_caffemodels(tmp_path, content, message):
    path = tmp_path / 'model.caffemodel'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_caffemodel(path)


def test_binary_file_given_as_prototxt(tmp_path):
    path = tmp_path / 'model.prototxt'
    path.write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match='is not a Caffe text network definition'):
        read_prototxt(path)
