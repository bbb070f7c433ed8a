"""Seeded, bounded fuzz of convert-caffe: no input reaches a traceback.

Around a release-format caffemodel of a small SKNet (the release's graph, layer names and parameters; narrow
widths, and the 224 input and 7x7 head pool scaled down to 64 and 2x2, so that a conversion takes milliseconds),
with its own spec, each mutant runs through the whole convert-caffe command in this process:
- byte level: truncations, byte flips in layer headers (names, types, wiring, parameters) and in blob payloads
  (shapes and values), and multi-byte flips anywhere;
- protobuf level: layers deleted, duplicated, moved, retyped, renamed, rewired; parameter fields set to odd
  values or cleared; blobs dropped, added, reshaped or cut; phase rules added;
- semantically neutral encodings (Caffe's Split layers, out-of-place tops, renamed weightless layers, other blob
  encodings, equivalent parameters, train-only layers, a deploy definition, reordered independent layers).
Every run is either a conversion or one line on stderr with a non-zero exit and nothing in the output folder.
A neutral mutant must convert, to exactly the tensors of the unchanged file; any other conversion must compute
what the mutant itself computes: its logits in OpenCV's Caffe importer (the file's own graph and blobs) against
the converted timm model's.
"""
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import timm
import torch
from safetensors.numpy import load_file

import converters.caffe.convert
from converters.caffe.proto import BlobProto, LayerParameter, NetParameter, read_caffemodel
from converters.caffe.cli import main as convert_main
from converters.caffe.spec import architecture_spec, spec_text
from converters.caffe.verify import compare, generated_images, opencv_logits, timm_logits
from converters.caffe.writer import insert_splits, write_caffemodel
from support import randomize_norms

SEED = int(os.environ.get('CONVERT_FUZZ_SEED', 12))  # another seed explores further; CI keeps this one
MODEL = 'sknet_tiny'
# mutants per kind: about 25 s in all on the 2-core CI machine
COUNTS = {'truncate': 30, 'header flip': 160, 'payload flip': 60, 'multi flip': 30, 'protobuf': 220, 'neutral': 54}
RELEASE_TYPES = ('Convolution', 'CuDNNBatchNorm', 'BatchNorm', 'Scale', 'ReLU', 'Pooling', 'Eltwise', 'Reshape',
                 'Softmax', 'Slice', 'Axpy', 'InnerProduct', 'Split', 'Dropout', 'PReLU', '')
SIZE = 64  # the release's 224 input and 7x7 head pool, scaled down: 64 and 2x2
IMAGES = generated_images(2, SIZE, seed=3)


class _Tiny:
    """The small SKNet: its timm model, spec folder, release-format files and the tensors they convert to."""

    def __init__(self, root: Path):
        self.model = timm.create_model(
            'sknet50.caffe_in1k', layers=(1, 2, 1, 1), channels=(8, 16, 32, 64), cardinality=4, base_width=16,
            sk_attn_channels=(8, 8, 8, 8), num_classes=10,
            pretrained_cfg_overlay=dict(input_size=(3, SIZE, SIZE), pool_size=(SIZE // 32, SIZE // 32))).eval()
        randomize_norms(self.model, seed=SEED)
        spec = dict(architecture_spec(self.model), architecture=MODEL)
        self.spec_dir = root / 'specs'
        self.spec_dir.mkdir()
        (self.spec_dir / f'{MODEL}.json').write_text(spec_text(spec))
        self.files = {}
        for style in ('cudnn', 'bvlc'):
            path = root / f'{style}.caffemodel'
            write_caffemodel(self.model, path, bn_style=style)
            self.files[style] = path.read_bytes()
        self.data_config = timm.data.resolve_data_config({}, model=self.model)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return _Tiny(tmp_path_factory.mktemp('tiny'))


# -- the wire format, for byte-level mutants --------------------------------------------------------------

def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes, start: int, end: int):
    """(field number, payload start, payload end) of each length-delimited field in data[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            pos = _varint(data, pos)[1]
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            length, pos = _varint(data, pos)
            yield key >> 3, pos, pos + length
            pos += length


def _regions(data: bytes) -> Tuple[List[range], List[range]]:
    """Byte ranges of layer headers (everything of a layer but its blobs) and of blob payloads."""
    headers, payloads = [], []
    for number, start, end in _fields(data, 0, len(data)):
        if number != 100:  # NetParameter.layer
            headers.append(range(start, end))
            continue
        header_start = start
        for inner, blob_start, blob_end in _fields(data, start, end):
            if inner == 7:  # LayerParameter.blobs
                headers.append(range(header_start, blob_start))
                payloads.append(range(blob_start, blob_end))
                header_start = blob_end
        headers.append(range(header_start, end))
    return [r for r in headers if len(r)], payloads


def _flip(data: bytearray, rng: random.Random, regions: List[range]) -> None:
    region = rng.choice(regions)
    data[rng.choice(region)] ^= rng.randrange(1, 256)


# -- protobuf-level mutants -------------------------------------------------------------------------------

def _copy(layer: LayerParameter) -> LayerParameter:
    copy = LayerParameter()
    copy.CopyFrom(layer)
    return copy


def _relayer(net: NetParameter, layers: List[LayerParameter]) -> None:
    layers = [_copy(layer) for layer in layers]
    del net.layer[:]
    net.layer.extend(layers)


def _blobs_of(net: NetParameter) -> List[BlobProto]:
    return [blob for layer in net.layer for blob in layer.blobs]


def _param_messages(layer: LayerParameter):
    return [value for field, value in layer.ListFields() if field.name.endswith('_param')]


def _odd_value(field, rng: random.Random):
    if field.enum_type is not None:
        return rng.choice([v.number for v in field.enum_type.values])
    if field.type == field.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return rng.choice([0., -1., 1e-3, 2., 1e30, float('nan')])
    if field.type == field.TYPE_STRING:
        return rng.choice(['', 'x', 'constant'])
    signed = field.type in (field.TYPE_INT32, field.TYPE_INT64)
    return rng.choice([0, 1, 2, 3, 7, 2 ** 31 - 1] + ([-1, -2] if signed else []))


def _mutate_param(net, rng):
    layer = rng.choice([layer for layer in net.layer if _param_messages(layer)])
    message = rng.choice(_param_messages(layer))
    fields = [f for f in message.DESCRIPTOR.fields if f.message_type is None]
    field = rng.choice(fields)
    value = _odd_value(field, rng)
    container = getattr(message, field.name)
    if not isinstance(container, (int, float, str, bytes)):  # repeated
        if rng.random() < 0.3 or not len(container):
            container.append(value)
        else:
            container[rng.randrange(len(container))] = value
    else:
        setattr(message, field.name, value)
    return f'{layer.name}: {message.DESCRIPTOR.name}.{field.name} = {value}'


def _clear_field(net, rng):
    layer = rng.choice(net.layer)
    field = rng.choice([f for f, _ in layer.ListFields()])
    layer.ClearField(field.name)
    return f'{layer.name}: {field.name} cleared'


def _delete_layer(net, rng):
    i = rng.randrange(len(net.layer))
    name = net.layer[i].name
    del net.layer[i]
    return f'{name} deleted'


def _duplicate_layer(net, rng):
    layers = list(net.layer)
    i = rng.randrange(len(layers))
    layers.insert(i + rng.choice([0, 1, 2]), layers[i])
    _relayer(net, layers)
    return f'{layers[i].name} duplicated'


def _move_layer(net, rng):
    layers = list(net.layer)
    i, j = rng.randrange(len(layers)), rng.randrange(len(layers))
    layers.insert(j, layers.pop(i))
    _relayer(net, layers)
    return f'layer {i} moved to {j}'


def _swap_names(net, rng):
    kind = rng.choice(['Convolution', 'CuDNNBatchNorm', 'BatchNorm', 'ReLU', None])
    layers = [layer for layer in net.layer if kind is None or layer.type == kind]
    a, b = rng.sample(layers if len(layers) > 1 else list(net.layer), 2)
    a.name, b.name = b.name, a.name
    return f'names of {a.name} and {b.name} swapped'


def _swap_twins(net, rng):
    """Swap the names of two weighted layers whose blobs have the same shapes: looked up by name, each unit
    would silently get the other's weights."""
    by_shapes: Dict[tuple, List[LayerParameter]] = {}
    for layer in net.layer:
        if layer.type == 'Convolution' and len(layer.blobs):
            by_shapes.setdefault(tuple(tuple(blob.shape.dim) for blob in layer.blobs), []).append(layer)
    twins = [layers for layers in by_shapes.values() if len(layers) > 1]
    if not twins:  # an earlier mutation left none
        return _swap_names(net, rng)
    a, b = rng.sample(rng.choice(twins), 2)
    a.name, b.name = b.name, a.name
    return f'names of {a.name} and {b.name} (same shapes) swapped'


def _rewire(net, rng):
    layer = rng.choice([layer for layer in net.layer if len(layer.bottom) + len(layer.top)])
    blobs = sorted({blob for other in net.layer for blob in (*other.top, *other.bottom)})
    field = rng.choice([f for f in ('bottom', 'top') if len(getattr(layer, f))])
    values = getattr(layer, field)
    index = rng.randrange(len(values))
    values[index] = rng.choice(blobs + ['fresh'])
    return f'{layer.name}: {field}[{index}] = {values[index]}'


def _retype(net, rng):
    layer = rng.choice(net.layer)
    layer.type = rng.choice(RELEASE_TYPES)
    return f'{layer.name}: type = {layer.type!r}'


def _blob_change(net, rng):
    layer = rng.choice([layer for layer in net.layer if len(layer.blobs)])
    action = rng.choice(['drop', 'add', 'reshape', 'cut', 'legacy dims'])
    i = rng.randrange(len(layer.blobs))
    blob = layer.blobs[i]
    if action == 'drop':
        del layer.blobs[i]
    elif action == 'add':
        layer.blobs.add().CopyFrom(blob)
    elif action == 'reshape':
        dims = list(blob.shape.dim)
        k = rng.randrange(len(dims))
        dims[k] = max(0, dims[k] + rng.choice([-1, 1, dims[k]]))
        if rng.random() < 0.3:
            dims.insert(rng.randrange(len(dims) + 1), 1)  # a singleton axis more: Caffe refuses, values unchanged
        del blob.shape.dim[:]
        blob.shape.dim.extend(dims)
    elif action == 'cut':
        blob.data[0] = blob.data[0][:-4 * rng.randrange(1, 3)]
    else:
        dims = list(blob.shape.dim)
        blob.ClearField('shape')
        blob.num, blob.channels, blob.height, blob.width = ([1] * 4 + dims)[-4:] if len(dims) <= 4 else dims[:4]
    return f'{layer.name}: blob {i} {action}'


def _phase_rule(net, rng):
    layer = rng.choice(net.layer)
    rule = rng.choice(['include TRAIN', 'include TEST', 'exclude TEST', 'include stage', 'include level'])
    kind, what = rule.split()
    added = getattr(layer, kind).add()
    if what in ('TRAIN', 'TEST'):
        added.phase = 0 if what == 'TRAIN' else 1
    elif what == 'stage':
        added.stage.append('deploy')
    else:
        added.min_level = 1
    return f'{layer.name}: {rule}'


PROTOBUF_MUTATIONS = (_mutate_param, _mutate_param, _mutate_param, _clear_field, _delete_layer, _duplicate_layer,
                      _move_layer, _swap_names, _swap_twins, _rewire, _rewire, _retype, _blob_change, _blob_change,
                      _phase_rule)


# -- neutral mutants: other encodings of the same network -------------------------------------------------

def _n_splits(net, rng):
    _relayer(net, insert_splits(net).layer)


def _n_out_of_place(net, rng):
    """Give in-place layers (ReLU, BN's Scale) tops of their own; their readers follow."""
    current: Dict[str, str] = {}  # blob name in the file -> the name it has now
    for i, layer in enumerate(net.layer):
        originals = list(layer.bottom)
        layer.bottom[:] = [current.get(blob, blob) for blob in originals]
        for j, top in enumerate(layer.top):
            if j < len(originals) and originals[j] == top:  # in place: still on the (renamed) blob, or a new one
                fresh = not len(layer.include) and rng.random() < 0.7
                current[top] = layer.top[j] = f'{top}@{i}' if fresh else layer.bottom[j]
            else:
                current.pop(top, None)


def _n_rename_weightless(net, rng):
    for layer in net.layer:
        if layer.type not in ('Convolution', 'InnerProduct') and rng.random() < 0.5:
            layer.name = f'{layer.name}.renamed'


def _varint_bytes(value: int) -> bytes:
    out = b''
    while value > 0x7F:
        out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
    return out + bytes([value])


def _n_blob_encodings(net, rng):
    for blob in _blobs_of(net):
        choice = rng.random()
        values = np.frombuffer(b''.join(blob.data), '<f4')
        if choice < 0.2 and len(values) <= 4096:  # unpacked: one fixed32 field 5 per value (kept as unknown fields)
            shape = blob.shape.SerializeToString()
            encoded = b'\x3a' + _varint_bytes(len(shape)) + shape + b''.join(b'\x2d' + struct.pack('<f', v)
                                                                               for v in values)
            blob.Clear()
            blob.MergeFromString(encoded)
        elif choice < 0.4:
            del blob.data[:]
            blob.double_data.append(values.astype('<f8').tobytes())
        elif choice < 0.6 and len(blob.shape.dim) <= 4:
            dims = list(blob.shape.dim)
            blob.ClearField('shape')
            blob.num, blob.channels, blob.height, blob.width = ([1] * 4 + dims)[-4:]
        elif choice < 0.7 and len(values) > 1:
            half = len(values) // 2 * 4
            data = b''.join(blob.data)
            del blob.data[:]
            blob.data.extend([data[:half], data[half:]])  # one packed field in two chunks, as protobuf allows


def _n_equivalent_parameters(net, rng):
    for layer in net.layer:
        if layer.type == 'Convolution' and len(layer.convolution_param.kernel_size) and rng.random() < 0.5:
            p = layer.convolution_param
            k = p.kernel_size[0]
            del p.kernel_size[:]
            p.kernel_h, p.kernel_w = k, k
            if len(p.pad) and rng.random() < 0.5:
                pad = p.pad[0]
                del p.pad[:]
                p.pad_h, p.pad_w = pad, pad
            if len(p.stride) == 1 and rng.random() < 0.5:
                p.stride.append(p.stride[0])  # once per spatial axis
        elif layer.type == 'Pooling' and layer.pooling_param.pool == 1 and layer.pooling_param.HasField('kernel_size'):
            layer.pooling_param.ClearField('kernel_size')  # the head's 7x7 average: global at 224
            layer.pooling_param.ClearField('stride')
            layer.pooling_param.global_pooling = True
        elif layer.type == 'Slice' and rng.random() < 0.5:
            del layer.slice_param.slice_point[:]  # two equal parts
        elif layer.name.endswith('/B_softmax') and rng.random() < 0.5:
            layer.softmax_param.axis = -3  # of the (N, 2, C, 1) attention logits
        elif layer.type == 'Eltwise' and not len(layer.eltwise_param.coeff) and rng.random() < 0.5:
            layer.bottom[:] = list(layer.bottom)[::-1]  # a sum, either way round
            layer.eltwise_param.coeff.extend([1., 1.])


def _n_training_layers(net, rng):
    layers = list(net.layer)
    for i in reversed(range(len(layers))):
        if layers[i].type == 'ReLU' and rng.random() < 0.3:
            dropout = LayerParameter(name=f'{layers[i].name}/drop', type='Dropout', bottom=layers[i].top,
                                     top=layers[i].top)
            dropout.include.add(phase=0)
            layers.insert(i + 1, dropout)
    _relayer(net, layers)
    for layer in net.layer:
        if layer.type == 'Input':
            layer.include.add(phase=0)  # the input as a TRAIN-only data layer, as a training snapshot holds it


def _n_deploy(net, rng):
    layers = [layer for layer in net.layer  # no input layer, label, loss or accuracy (nor Caffe's Split of the label)
              if layer.type not in ('Input', 'SoftmaxWithLoss', 'Accuracy') and 'label' not in layer.bottom]
    layers.append(LayerParameter(name='prob', type='Softmax', bottom=['classifier'], top=['prob']))
    _relayer(net, layers)
    net.input.append('data')


def _n_reorder(net, rng):
    """Move each projection shortcut (conv + BN) before its unit's first layer: both read the unit's input."""
    layers = list(net.layer)
    for proj in [layer.name for layer in layers if layer.name.endswith('/1x1_proj')]:
        unit = proj.split('/')[0]
        block = [layer for layer in layers if layer.name.startswith(f'{proj}/bn') or layer.name == proj]
        rest = [layer for layer in layers if layer not in block]
        first = next(i for i, layer in enumerate(rest) if layer.name.startswith(f'{unit}/'))
        layers = rest[:first] + block + rest[first:]
    _relayer(net, layers)


def _n_other_settings(net, rng):
    net.name = 'fine-tuned'
    for layer in net.layer:
        for spec in layer.param:
            spec.lr_mult, spec.decay_mult = 0., 0.
        if layer.type == 'Convolution':
            layer.convolution_param.weight_filler.type = 'xavier'
            layer.convolution_param.engine = 2


NEUTRAL = (_n_out_of_place, _n_rename_weightless, _n_blob_encodings, _n_equivalent_parameters, _n_training_layers,
           _n_deploy, _n_reorder, _n_other_settings, _n_splits)


# -- the run ---------------------------------------------------------------------------------------------

class _Fuzz:
    def __init__(self, tiny: _Tiny, tmp_path: Path, capsys, monkeypatch):
        self.tiny, self.capsys, self.monkeypatch = tiny, capsys, monkeypatch
        self.mutant = tmp_path / 'mutant.caffemodel'
        self.out_dir = tmp_path / 'out'
        self.out_dir.mkdir()
        self.output = self.out_dir / 'converted.safetensors'
        self.counts = {'converted': 0, 'neutral converted': 0, 'refused': 0, 'oracle skipped': 0}
        self.problems: List[str] = []
        self.refusal = ''
        self.unchanged = {style: self.convert(data, f'unchanged {style}') for style, data in tiny.files.items()}
        self.unchanged_logits = {style: self.forward(tensors) for style, tensors in self.unchanged.items()}

    def convert(self, data: bytes, what: str) -> Optional[Dict[str, np.ndarray]]:
        """Run convert-caffe on ``data``; check the outcome's form; return the tensors, or None on refusal."""
        self.mutant.write_bytes(data)
        self.monkeypatch.setattr(sys, 'argv', ['convert-caffe', str(self.mutant), '--model', MODEL, '--output',
                                               str(self.output)])
        try:
            with pytest.raises(SystemExit) as exit_info:
                convert_main()
        except BaseException as e:  # anything but SystemExit is a bug: reported with its mutant
            self.capsys.readouterr()
            self.problems.append(f'{what}: {type(e).__name__}: {e}')
            for path in self.out_dir.iterdir():
                path.unlink()
            return None
        out, err = self.capsys.readouterr()
        left = sorted(path.name for path in self.out_dir.iterdir())
        if exit_info.value.code == 0:
            if left != [self.output.name] or err:
                self.problems.append(f'{what}: converted, but left {left}, stderr {err!r}')
            tensors = load_file(self.output)
            self.output.unlink()
            return tensors
        lines = err.splitlines()
        self.refusal = err.strip()
        if len(lines) != 1 or not lines[0].startswith('convert-caffe: error: ') or 'Traceback' in err or left:
            self.problems.append(f'{what}: refused as {err!r}, left {left}')
        self.counts['refused'] += 1
        return None

    def is_unchanged(self, tensors: Dict[str, np.ndarray], style: str) -> bool:
        unchanged = self.unchanged[style]
        return tensors.keys() == unchanged.keys() and all(np.array_equal(tensors[k], v) for k, v in unchanged.items())

    def forward(self, tensors: Dict[str, np.ndarray]) -> np.ndarray:
        self.tiny.model.load_state_dict({key: torch.from_numpy(value) for key, value in tensors.items()})
        return timm_logits(self.tiny.model, IMAGES, self.tiny.data_config)

    def check_conversion(self, tensors: Dict[str, np.ndarray], style: str, what: str) -> None:
        """A converted mutant computes what the file does: OpenCV on its own graph and blobs against timm."""
        weights = read_caffemodel(self.mutant)
        reference, _ = opencv_logits(converters.caffe.convert.InferenceGraph(weights), weights, IMAGES)
        if not np.isfinite(reference).all() or np.abs(reference).max() > 1e30:
            self.counts['oracle skipped'] += 1  # payload flips to huge weights: no finite logits to compare
            return
        logits = self.unchanged_logits[style] if self.is_unchanged(tensors, style) else self.forward(tensors)
        result = compare(reference, logits)
        if not result.max_rel_diff <= 1e-4:
            self.problems.append(f'{what}: converted to another network (relative logit error {result.max_rel_diff})')

    def mutant_run(self, data: bytes, style: str, what: str) -> None:
        tensors = self.convert(data, what)
        if tensors is not None:
            self.counts['converted'] += 1
            self.check_conversion(tensors, style, what)

    def neutral_run(self, data: bytes, style: str, what: str) -> None:
        tensors = self.convert(data, what)
        if tensors is None:
            self.problems.append(f'{what}: an encoding of the same network was refused: {self.refusal}')
            return
        self.counts['neutral converted'] += 1
        if not self.is_unchanged(tensors, style):
            self.problems.append(f'{what}: converted to other tensors than the unchanged file')
        self.check_conversion(tensors, style, what)


def test_no_mutant_reaches_a_traceback(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(converters.caffe.convert, 'SPEC_DIR', tiny.spec_dir)
    rng = random.Random(SEED)
    start = time.perf_counter()
    fuzz = _Fuzz(tiny, tmp_path, capsys, monkeypatch)
    assert not fuzz.problems, fuzz.problems
    nets = {style: NetParameter.FromString(data) for style, data in tiny.files.items()}
    regions = {style: _regions(data) for style, data in tiny.files.items()}
    runs = 0
    for kind, count in COUNTS.items():
        for index in range(count):
            style = 'bvlc' if index % 4 == 3 else 'cudnn'
            data = tiny.files[style]
            headers, payloads = regions[style]
            what = f'{kind} #{index} ({style})'
            if kind == 'truncate':
                fuzz.mutant_run(data[:rng.randrange(1, len(data))], style, what)
            elif kind in ('header flip', 'payload flip', 'multi flip'):
                mutant = bytearray(data)
                places = {'header flip': headers, 'payload flip': payloads, 'multi flip': headers + payloads}[kind]
                for _ in range(1 if kind != 'multi flip' else rng.randrange(2, 9)):
                    _flip(mutant, rng, places)
                fuzz.mutant_run(bytes(mutant), style, what)
            else:
                net = NetParameter()
                net.CopyFrom(nets[style])
                if kind == 'protobuf':
                    described = [rng.choice(PROTOBUF_MUTATIONS)(net, rng) for _ in range(rng.choice([1, 1, 2]))]
                    fuzz.mutant_run(net.SerializeToString(), style, f"{what}: {'; '.join(described)}")
                else:
                    first = NEUTRAL[index % len(NEUTRAL)]
                    chosen = [first] + rng.sample([m for m in NEUTRAL if m is not first], rng.randrange(0, 3))
                    for mutate in chosen:
                        mutate(net, rng)
                    names = ', '.join(m.__name__[3:] for m in chosen)
                    fuzz.neutral_run(net.SerializeToString(), style, f'{what}: {names}')
            runs += 1
    seconds = time.perf_counter() - start
    summary = (f'fuzz (seed {SEED}): {runs} mutants in {seconds:.1f} s; {fuzz.counts["refused"]} refused in one '
               f'line, {fuzz.counts["converted"]} converted and matched OpenCV ({fuzz.counts["oracle skipped"]} '
               f'without finite logits to compare), {fuzz.counts["neutral converted"]} neutral ones converted to '
               f'the same tensors; {len(fuzz.problems)} problems')
    print(summary)
    assert not fuzz.problems, summary + ':\n' + '\n'.join(fuzz.problems[:20])
    assert fuzz.counts['refused'] > runs // 2 and fuzz.counts['converted'] > 10  # the fuzz reaches both outcomes
