"""``--verify``: the caffemodel through OpenCV's Caffe importer against the converted timm model.

OpenCV has neither the fork's ``CuDNNBatchNorm`` nor ``Axpy``, so it is fed a derived deploy net in which
they are rewritten as standard Caffe layers with the same arithmetic:
``CuDNNBatchNorm(scale, bias, mean, var)`` -> ``BatchNorm(mean, var, 1)`` + ``Scale(scale, bias)``;
``Axpy(a, x, y)`` -> ``Reshape(a -> (N, C))`` + ``Scale(x, a, axis 0)`` + ``Eltwise SUM(., y)``.
Every other layer goes to OpenCV as the graph has it, and every blob is the caffemodel's own. The graph is
the caffemodel's embedded definition (Caffe stores each layer's parameters next to its blobs) or the
user's ``--prototxt`` -- never one generated from the timm architecture, which would make the check
circular. Both sides see the same 8-bit images: OpenCV under the release's convention (BGR, 0..255 minus
(104, 117, 123)), timm under its data config.
"""
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from google.protobuf.message import Message

import timm_sknet  # noqa: F401  (registers the SK models with timm)
from timm_sknet.io.errors import UserError, require_module
from timm_sknet.io.images import read_image
from timm_sknet.weights.release import CAFFE_BGR_MEAN
from timm_sknet.io.synthetic import synthetic_images

from .proto import NetParameter, array_blob, blob_array, net_to_text
from .convert import CAFFE_TAG, InferenceGraph, bn_eps

__all__ = ['CAFFE_BGR_MEAN', 'TOLERANCE', 'Agreement', 'generated_images', 'load_images', 'opencv_logits',
           'timm_input', 'timm_logits', 'compare', 'verify_conversion']

TOLERANCE = 1e-4  # max |timm - opencv| / max |opencv| over all logits


def generated_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``timm_sknet.io.synthetic``'s pictures as OpenCV holds images: 8-bit BGR, (N, H, W, 3)."""
    return np.stack([np.asarray(image) for image in synthetic_images(count, size, seed)])[..., ::-1].copy()


def load_images(paths: Sequence[str], data_config: Dict) -> np.ndarray:
    """8-bit BGR crops (N, H, W, 3) of image files: shorter side to size / crop_pct, centre crop, bilinear. Each file
    is decoded whole or refused (``timm_sknet.io.images``), as ``timm-sknet validate`` does: OpenCV's own reader
    would run on the grey that libjpeg fills a cut-off JPEG with."""
    cv2 = require_module('cv2', 'verify')
    size = data_config['input_size'][-1]
    scale_size = int(size / data_config['crop_pct'])  # the release's 256 for 224
    crops = []
    for path in paths:
        image = np.ascontiguousarray(np.asarray(read_image(path, '--image'))[..., ::-1])  # RGB -> BGR
        h, w = image.shape[:2]
        ratio = scale_size / min(h, w)
        image = cv2.resize(image, (max(size, round(w * ratio)), max(size, round(h * ratio))),
                           interpolation=cv2.INTER_LINEAR)
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(image[top:top + size, left:left + size])
    return np.stack(crops)


def _add_layer(net: Message, name: str, layer_type: str, bottoms, tops) -> Message:
    return net.layer.add(name=name, type=layer_type, bottom=list(bottoms), top=list(tops))


def _deploy_net(graph: InferenceGraph, weights: Message, batch_shape: Tuple[int, ...]) -> Tuple[str, bytes]:
    """(prototxt text, caffemodel bytes) of the graph with the fork's layers rewritten for OpenCV."""
    blobs = {layer.name: layer.blobs for layer in weights.layer if len(layer.blobs)}
    deploy, params = NetParameter(name='deploy'), NetParameter()
    _add_layer(deploy, 'data', 'Input', [], [graph.image_blob]).input_param.shape.add().dim.extend(batch_shape)
    for layer in graph.layers:
        name = layer.name
        if layer.type == 'CuDNNBatchNorm':
            scale, bias, mean, var = (blob_array(b, name).reshape(-1) for b in blobs[name])
            _add_layer(deploy, name, 'BatchNorm', layer.bottom, layer.top).batch_norm_param.eps = bn_eps(layer)
            params.layer.add(name=name).blobs.extend(array_blob(a) for a in (mean, var, np.ones(1)))
            affine = _add_layer(deploy, f'{name}/affine', 'Scale', layer.top, layer.top)
            affine.scale_param.bias_term = True
            params.layer.add(name=affine.name).blobs.extend(array_blob(a) for a in (scale, bias))
        elif layer.type == 'Axpy':
            a, x, y = layer.bottom
            flat = _add_layer(deploy, f'{name}/a', 'Reshape', [a], [f'{name}/a'])
            flat.reshape_param.shape.dim.extend((0, 0))  # (N, C, 1, 1) -> (N, C), as the release's B_w0/reshape
            ax = _add_layer(deploy, f'{name}/ax', 'Scale', [x, flat.top[0]], [f'{name}/ax'])
            ax.scale_param.axis = 0
            ax.scale_param.bias_term = False
            total = _add_layer(deploy, name, 'Eltwise', [ax.top[0], y], layer.top)
            total.eltwise_param.operation = total.eltwise_param.SUM
        else:
            copy = deploy.layer.add()
            copy.CopyFrom(layer)
            del copy.blobs[:]
            if layer.type == 'BatchNorm':  # binary field 139 -> the text name OpenCV reads
                copy.ClearField('bvlc_batch_norm_param')
                copy.batch_norm_param.Clear()
                copy.batch_norm_param.eps = bn_eps(layer)
            if name in blobs:  # OpenCV's importer reads no double_data: those blobs go as packed float32
                params.layer.add(name=name).blobs.extend(
                    blob if len(blob.data) else array_blob(blob_array(blob, name)) for blob in blobs[name])
    return net_to_text(deploy), params.SerializeToString()


def opencv_logits(graph: InferenceGraph, weights: Message, images_bgr: np.ndarray) -> Tuple[np.ndarray, str]:
    """Logits of the caffemodel run by OpenCV on 8-bit BGR images, and the runtime's name."""
    cv2 = require_module('cv2', 'verify')
    batch = images_bgr.astype(np.float32) - np.array(CAFFE_BGR_MEAN, np.float32)
    batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    prototxt, caffemodel = _deploy_net(graph, weights, batch.shape)
    try:
        net = cv2.dnn.readNetFromCaffe(np.frombuffer(prototxt.encode(), np.uint8), np.frombuffer(caffemodel, np.uint8))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        net.enableWinograd(False)  # Winograd's 3x3 convolutions trade accuracy for speed
        net.setInput(batch, graph.image_blob)
        logits = net.forward(graph.logits_blob)
    except cv2.error as e:
        reason = next((line for line in str(e).splitlines() if 'error:' in line), str(e)).strip()
        raise UserError(f'OpenCV {cv2.__version__} cannot run the caffemodel ({reason}); convert without --verify, '
                        'or verify with another OpenCV version') from None
    return logits.reshape(len(images_bgr), -1), f'opencv {cv2.__version__}'


def timm_input(images_bgr: np.ndarray, data_config: Dict) -> torch.Tensor:
    """8-bit BGR images as a timm model takes them: ``(rgb01 - mean) / std`` with its data config."""
    rgb01 = torch.from_numpy(np.ascontiguousarray(images_bgr[..., ::-1])).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(data_config['mean']).view(1, 3, 1, 1)
    std = torch.tensor(data_config['std']).view(1, 3, 1, 1)
    return (rgb01 - mean) / std


def timm_logits(model: torch.nn.Module, images_bgr: np.ndarray, data_config: Dict) -> np.ndarray:
    """Logits of a timm model (in eval mode) on 8-bit BGR images."""
    with torch.no_grad():
        return model.eval()(timm_input(images_bgr, data_config)).numpy()


class Agreement(NamedTuple):
    max_abs_diff: float
    max_rel_diff: float
    top5_same: int  # images whose top-5 classes are the same set on both sides
    images: int

    @property
    def ok(self) -> bool:
        return self.max_rel_diff <= TOLERANCE and self.top5_same == self.images


def compare(reference: np.ndarray, logits: np.ndarray) -> Agreement:
    max_abs = float(np.abs(logits - reference).max())
    top5_same = sum(set(np.argsort(-r)[:5]) == set(np.argsort(-x)[:5]) for r, x in zip(reference, logits))
    return Agreement(max_abs, max_abs / float(np.abs(reference).max()), int(top5_same), len(reference))


def verify_conversion(
        graph: InferenceGraph,
        weights: Message,
        tensors: Dict[str, np.ndarray],
        model_name: str,
        images: Optional[Sequence[str]],
        generated_count: int,
) -> Dict[str, str]:
    """Compare the converted model's logits with OpenCV's run of the caffemodel on ``images`` (or
    ``generated_count`` generated ones); print the result and return it as safetensors metadata.

    Raises ``UserError`` when they disagree beyond ``TOLERANCE`` or on a top-5 set.
    """
    model = timm.create_model(f'{model_name}.{CAFFE_TAG}', pretrained=False)
    model.load_state_dict({key: torch.tensor(value) for key, value in tensors.items()})
    data_config = timm.data.resolve_data_config({}, model=model)
    size = data_config['input_size'][-1]
    if images:
        batch = load_images(images, data_config)
        described = ', '.join(Path(p).name for p in images)
    else:
        batch = generated_images(generated_count, size)
        described = f'{generated_count} generated {size}x{size} images (seed 0)'
    reference, runtime = opencv_logits(graph, weights, batch)
    result = compare(reference, timm_logits(model, batch, data_config))
    top5 = f'{result.top5_same}/{result.images}'
    print(f'verify: {runtime} (Caffe importer) vs timm on {described}')
    print(f'  max |logit diff| {result.max_abs_diff:.3g}, relative {result.max_rel_diff:.3g} '
          f'(tolerance {TOLERANCE:.0e}), same top-5 classes on {top5} images')
    if not result.ok:
        raise UserError(
            f'verification failed: relative logit error {result.max_rel_diff:.3g} (tolerance {TOLERANCE:.0e}), '
            f'same top-5 on {top5} images; nothing written')
    return {
        'verify_runtime': runtime,
        'verify_images': str(result.images),
        'verify_max_abs_diff': f'{result.max_abs_diff:.3g}',
        'verify_max_rel_diff': f'{result.max_rel_diff:.3g}',
        'verify_top5_agreement': top5,
    }
