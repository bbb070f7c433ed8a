"""A minimal Caffe schema, built at run time from descriptors, and the readers of ``.caffemodel`` / ``.prototxt``.

Only the fields the SKNet release and its conversion need are declared (numbers as in BVLC ``caffe.proto`` and
the SKNet fork); the protobuf runtime keeps every other field as an unknown field, so other forks' additions
pass through. Building the classes from a ``FileDescriptorProto`` instead of checking in ``protoc`` output keeps
this working across protobuf releases.

Two deliberate departures from ``caffe.proto``:
- ``BlobProto.data`` / ``double_data`` are declared ``repeated bytes``: a packed float field has the wire type of
  ``bytes``, so each chunk arrives as raw little-endian floats for ``np.frombuffer`` instead of a Python float
  list (several times faster and smaller for a 200 MB file). The rare unpacked encoding lands in the unknown
  fields and is decoded from there.
- ``LayerParameter`` field 200 is the SKNet fork's ``batch_norm_param`` (frozen, momentum, eps, fillers); BVLC's
  ``BatchNormParameter`` (field 139) is declared as ``bvlc_batch_norm_param``. Forks that give field 200 another
  meaning (SSD's ``annotated_data_param``) do not break parsing: a wire type that does not match the declared
  one makes the field unknown, not an error.
"""
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, unknown_fields
from google.protobuf.message import DecodeError, Message

from timm_sknet.io.errors import UserError

__all__ = [
    'NetParameter', 'LayerParameter', 'BlobProto', 'read_caffemodel', 'read_prototxt', 'blob_shape', 'blob_array',
    'array_blob', 'net_to_text',
]

_PACKAGE = 'caffe'

_PHASE = ('TRAIN', 'TEST')
_ENGINE = ('DEFAULT', 'CAFFE', 'CUDNN')

# message -> fields: (name, number, type, label, default). A type is a scalar's name, a message's name, or the
# tuple of an enum's values (declared inside the message, as caffe.proto does, so value names may repeat).
_MESSAGES: Dict[str, Tuple[tuple, ...]] = {
    'BlobShape': (
        ('dim', 1, 'int64', 'repeated'),
    ),
    'BlobProto': (
        ('shape', 7, 'BlobShape'),
        ('data', 5, 'bytes', 'repeated'),  # packed float on the wire
        ('double_data', 8, 'bytes', 'repeated'),  # packed double on the wire
        ('num', 1, 'int32'),  # legacy 4-D shape
        ('channels', 2, 'int32'),
        ('height', 3, 'int32'),
        ('width', 4, 'int32'),
    ),
    'FillerParameter': (
        ('type', 1, 'string', 'optional', 'constant'),
        ('value', 2, 'float'),
        ('min', 3, 'float'),
        ('max', 4, 'float', 'optional', '1'),
        ('mean', 5, 'float'),
        ('std', 6, 'float', 'optional', '1'),
        ('sparse', 7, 'int32', 'optional', '-1'),
        ('variance_norm', 8, ('FAN_IN', 'FAN_OUT', 'AVERAGE')),
    ),
    'ParamSpec': (
        ('name', 1, 'string'),
        ('lr_mult', 3, 'float', 'optional', '1'),
        ('decay_mult', 4, 'float', 'optional', '1'),
    ),
    'NetStateRule': (
        ('phase', 1, _PHASE),
        ('min_level', 2, 'int32'),
        ('max_level', 3, 'int32'),
        ('stage', 4, 'string', 'repeated'),
        ('not_stage', 5, 'string', 'repeated'),
    ),
    'ConvolutionParameter': (
        ('num_output', 1, 'uint32'),
        ('bias_term', 2, 'bool', 'optional', 'true'),
        ('pad', 3, 'uint32', 'repeated'),
        ('kernel_size', 4, 'uint32', 'repeated'),
        ('stride', 6, 'uint32', 'repeated'),
        ('dilation', 18, 'uint32', 'repeated'),
        ('pad_h', 9, 'uint32'),
        ('pad_w', 10, 'uint32'),
        ('kernel_h', 11, 'uint32'),
        ('kernel_w', 12, 'uint32'),
        ('stride_h', 13, 'uint32'),
        ('stride_w', 14, 'uint32'),
        ('group', 5, 'uint32', 'optional', '1'),
        ('weight_filler', 7, 'FillerParameter'),
        ('bias_filler', 8, 'FillerParameter'),
        ('engine', 15, _ENGINE),
        ('axis', 16, 'int32', 'optional', '1'),
    ),
    'PoolingParameter': (
        ('pool', 1, ('MAX', 'AVE', 'STOCHASTIC')),
        ('pad', 4, 'uint32'),
        ('pad_h', 9, 'uint32'),
        ('pad_w', 10, 'uint32'),
        ('kernel_size', 2, 'uint32'),
        ('kernel_h', 5, 'uint32'),
        ('kernel_w', 6, 'uint32'),
        ('stride', 3, 'uint32', 'optional', '1'),
        ('stride_h', 7, 'uint32'),
        ('stride_w', 8, 'uint32'),
        ('engine', 11, _ENGINE),
        ('global_pooling', 12, 'bool'),
        ('ceil_mode', 13, 'bool', 'optional', 'true'),  # OpenCV's name and meaning (BVLC: round_mode, CEIL = 0)
    ),
    'EltwiseParameter': (
        ('operation', 1, ('PROD', 'SUM', 'MAX'), 'optional', 'SUM'),
        ('coeff', 2, 'float', 'repeated'),
    ),
    'InnerProductParameter': (
        ('num_output', 1, 'uint32'),
        ('bias_term', 2, 'bool', 'optional', 'true'),
        ('weight_filler', 3, 'FillerParameter'),
        ('bias_filler', 4, 'FillerParameter'),
        ('axis', 5, 'int32', 'optional', '1'),
        ('transpose', 6, 'bool'),
    ),
    'ReLUParameter': (
        ('negative_slope', 1, 'float'),
    ),
    'SoftmaxParameter': (
        ('engine', 1, _ENGINE),
        ('axis', 2, 'int32', 'optional', '1'),
    ),
    'SliceParameter': (
        ('axis', 3, 'int32', 'optional', '1'),
        ('slice_point', 2, 'uint32', 'repeated'),
        ('slice_dim', 1, 'uint32', 'optional', '1'),
    ),
    'ReshapeParameter': (
        ('shape', 1, 'BlobShape'),
        ('axis', 2, 'int32'),
        ('num_axes', 3, 'int32', 'optional', '-1'),
    ),
    'ScaleParameter': (
        ('axis', 1, 'int32', 'optional', '1'),
        ('num_axes', 2, 'int32', 'optional', '1'),
        ('filler', 3, 'FillerParameter'),
        ('bias_term', 4, 'bool'),
        ('bias_filler', 5, 'FillerParameter'),
    ),
    'InputParameter': (
        ('shape', 1, 'BlobShape', 'repeated'),
    ),
    'AccuracyParameter': (
        ('top_k', 1, 'uint32', 'optional', '1'),
        ('axis', 2, 'int32', 'optional', '1'),
        ('ignore_label', 3, 'int32'),
    ),
    'BatchNormParameter': (  # BVLC, LayerParameter field 139
        ('use_global_stats', 1, 'bool'),
        ('moving_average_fraction', 2, 'float', 'optional', '0.999'),
        ('eps', 3, 'float', 'optional', '1e-5'),
    ),
    'CuDNNBatchNormParameter': (  # the SKNet fork, LayerParameter field 200
        ('frozen', 1, 'bool'),
        ('momentum', 2, 'float'),
        ('eps', 3, 'float', 'optional', '1e-5'),
        ('scale_filler', 4, 'FillerParameter'),
        ('bias_filler', 5, 'FillerParameter'),
    ),
    'LayerParameter': (
        ('name', 1, 'string'),
        ('type', 2, 'string'),
        ('bottom', 3, 'string', 'repeated'),
        ('top', 4, 'string', 'repeated'),
        ('phase', 10, _PHASE),
        ('loss_weight', 5, 'float', 'repeated'),
        ('param', 6, 'ParamSpec', 'repeated'),
        ('blobs', 7, 'BlobProto', 'repeated'),
        ('include', 8, 'NetStateRule', 'repeated'),
        ('exclude', 9, 'NetStateRule', 'repeated'),
        ('accuracy_param', 102, 'AccuracyParameter'),
        ('convolution_param', 106, 'ConvolutionParameter'),
        ('eltwise_param', 110, 'EltwiseParameter'),
        ('inner_product_param', 117, 'InnerProductParameter'),
        ('pooling_param', 121, 'PoolingParameter'),
        ('relu_param', 123, 'ReLUParameter'),
        ('softmax_param', 125, 'SoftmaxParameter'),
        ('slice_param', 126, 'SliceParameter'),
        ('reshape_param', 133, 'ReshapeParameter'),
        ('bvlc_batch_norm_param', 139, 'BatchNormParameter'),
        ('scale_param', 142, 'ScaleParameter'),
        ('input_param', 143, 'InputParameter'),
        ('batch_norm_param', 200, 'CuDNNBatchNormParameter'),
    ),
    'NetParameter': (
        ('name', 1, 'string'),
        ('input', 3, 'string', 'repeated'),  # a deploy prototxt's declared input blobs
        ('layers', 2, 'bytes', 'repeated'),  # legacy V1LayerParameter: only detected, to refuse it clearly
        ('layer', 100, 'LayerParameter', 'repeated'),
    ),
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    'bool': _F.TYPE_BOOL, 'bytes': _F.TYPE_BYTES, 'float': _F.TYPE_FLOAT, 'int32': _F.TYPE_INT32,
    'int64': _F.TYPE_INT64, 'string': _F.TYPE_STRING, 'uint32': _F.TYPE_UINT32,
}
_LABELS = {'optional': _F.LABEL_OPTIONAL, 'repeated': _F.LABEL_REPEATED}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name='timm_sknet_caffe.proto', package=_PACKAGE, syntax='proto2')
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, field_type, *rest in fields:
            label = rest[0] if rest else 'optional'
            field = message.field.add(name=field_name, number=number, label=_LABELS[label])
            if isinstance(field_type, tuple):
                enum_name = field_name.title().replace('_', '')
                enum = message.enum_type.add(name=enum_name)
                for value_number, value in enumerate(field_type):
                    enum.value.add(name=value, number=value_number)
                field.type, field.type_name = _F.TYPE_ENUM, f'.{_PACKAGE}.{name}.{enum_name}'
            elif field_type in _SCALARS:
                field.type = _SCALARS[field_type]
            else:
                field.type, field.type_name = _F.TYPE_MESSAGE, f'.{_PACKAGE}.{field_type}'
            if len(rest) > 1:
                field.default_value = rest[1]
            if label == 'repeated' and field_type == 'int64':
                field.options.packed = True  # BlobShape.dim, as in caffe.proto
    return proto


def _message_classes() -> Dict[str, type]:
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with another caffe_pb2 in the process
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f'{_PACKAGE}.{name}'))
        for name in _MESSAGES}


_CLASSES = _message_classes()
NetParameter = _CLASSES['NetParameter']
LayerParameter = _CLASSES['LayerParameter']
BlobProto = _CLASSES['BlobProto']

_FLOAT_FIELD, _DOUBLE_FIELD = 5, 8
_WIRE_FIXED32, _WIRE_FIXED64 = 5, 1


def _read_bytes(path: os.PathLike, what: str) -> bytes:
    path = Path(path)
    try:  # a name longer than the file system allows fails even the checks (ENAMETOOLONG)
        if path.is_dir():
            raise UserError(f'{what} {path} is a directory; give the {what} file itself')
        if not path.exists():
            raise UserError(f'{what} {path} does not exist')
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f'cannot read {what} {path}: {e.strerror or e}; check the path and its permissions') from None
    if not data:
        raise UserError(f'{what} {path} is empty')
    return data


_TEXT = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE


def _first_non_text(message: Message) -> Optional[Tuple[str, bytes]]:
    """(field path, raw value) of the first string field that is not UTF-8: protobuf hands those over as bytes."""
    for field, value in message.ListFields():
        repeated = not isinstance(value, (str, bytes, int, float, Message))
        for index, item in enumerate(value if repeated else [value]):
            where = f'{field.name}[{index}]' if repeated else field.name
            if field.type == _TEXT and isinstance(item, bytes):
                return where, item
            if field.type == _MESSAGE and field.message_type.name != 'BlobProto':
                found = _first_non_text(item)
                if found:
                    return f'{where}.{found[0]}', found[1]
    return None


def _check_layers(net: Message, path: Path, what: str) -> Message:
    if len(net.layers):
        raise UserError(
            f"{what} {path} uses Caffe's legacy V1 'layers' format; upgrade it with Caffe's "
            "upgrade_net_proto_binary / upgrade_net_proto_text tools first")
    if not len(net.layer):
        raise UserError(f'{what} {path} holds no layers: it is not a Caffe network')
    found = _first_non_text(net)
    if found:
        raise UserError(f'{what} {path}: {found[0]} is not UTF-8 text ({found[1][:40]!r}): the file is corrupt; '
                        'use the released file')
    return net


def read_caffemodel(path: os.PathLike) -> Message:
    """Parse a binary ``.caffemodel`` into a ``NetParameter`` (layers with their blobs)."""
    data = _read_bytes(path, 'caffemodel')
    net = NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError:
        raise UserError(f'caffemodel {path} is truncated or not a Caffe model (protobuf decoding failed)') from None
    return _check_layers(net, Path(path), 'caffemodel')


def read_prototxt(path: os.PathLike) -> Message:
    """Parse a text ``.prototxt`` network definition; fields this schema does not declare are skipped."""
    data = _read_bytes(path, 'prototxt')
    net = NetParameter()
    try:
        text_format.Parse(data.decode('utf-8'), net, allow_unknown_field=True)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise UserError(f'prototxt {path} is not a Caffe text network definition: {e}') from None
    return _check_layers(net, Path(path), 'prototxt')


def net_to_text(net: Message) -> str:
    return text_format.MessageToString(net)


def blob_shape(blob: Message, where: str) -> Tuple[int, ...]:
    """The blob's shape: its ``shape`` field, or the legacy (num, channels, height, width)."""
    if blob.HasField('shape'):
        shape = tuple(blob.shape.dim)
    else:
        legacy = (blob.num, blob.channels, blob.height, blob.width)
        # legacy 4-D blobs leave unused leading axes at 0 or 1; both mean "absent"
        shape = tuple(max(d, 1) for d in legacy) if any(legacy) else ()
    if any(d < 0 for d in shape):
        raise UserError(f'{where} has a negative dimension in its shape {list(shape)}: the file is corrupt')
    return shape


def _unpacked_values(blob: Message, field_number: int, wire_type: int) -> List[int]:
    return [f.data for f in unknown_fields.UnknownFieldSet(blob)
            if f.field_number == field_number and f.wire_type == wire_type]


def blob_array(blob: Message, where: str) -> np.ndarray:
    """The blob's values as a float32 array of its shape (read-only view where the encoding allows)."""
    shape = blob_shape(blob, where)
    if len(blob.data):
        values = np.frombuffer(b''.join(blob.data) if len(blob.data) > 1 else blob.data[0], dtype='<f4')
    elif len(blob.double_data):
        values = np.frombuffer(b''.join(blob.double_data), dtype='<f8').astype(np.float32)
    else:
        floats = _unpacked_values(blob, _FLOAT_FIELD, _WIRE_FIXED32)
        doubles = _unpacked_values(blob, _DOUBLE_FIELD, _WIRE_FIXED64)
        if floats:
            values = np.array(floats, dtype=np.uint32).view(np.float32)
        else:
            values = np.array(doubles, dtype=np.uint64).view(np.float64).astype(np.float32)
    if values.size != math.prod(shape):
        raise UserError(
            f'{where} holds {values.size} values for shape {list(shape)}: the file is truncated or corrupt')
    return values.reshape(shape)


def array_blob(array: np.ndarray, shape: Optional[Sequence[int]] = None) -> Message:
    """A ``BlobProto`` of ``array`` (float32, packed); ``shape`` overrides the array's own (e.g. (1, C, 1, 1))."""
    blob = BlobProto()
    blob.shape.dim.extend(array.shape if shape is None else shape)
    blob.data.append(np.ascontiguousarray(array, dtype='<f4').tobytes())
    return blob
