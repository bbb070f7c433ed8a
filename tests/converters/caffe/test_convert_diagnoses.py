"""convert-caffe names the likely cause: a caffemodel cut short on a layer boundary (its protobuf still parses) is
an incomplete download, and a --prototxt that disagrees with the caffemodel is the prototxt's fault, not the
caffemodel's or --model's. Run as the user runs it (the installed ``convert-caffe``, in a subprocess); each refusal
is one line, and the input files are byte for byte the same afterwards, with nothing written."""
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import timm

from converters.caffe.proto import NetParameter, read_caffemodel
from converters.caffe.writer import write_caffemodel
from timm_sknet.io.files import sha256_file

BIN_DIR = Path(sys.executable).parent


def _snapshot(root: Path) -> Dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.is_file()}


def _refused(workdir: Path, *args: str) -> str:
    """convert-caffe ARGS in ``workdir``: refused in one line, no traceback, nothing written, inputs unchanged."""
    before = _snapshot(workdir)
    output = workdir / 'out.safetensors'
    proc = subprocess.run([str(BIN_DIR / 'convert-caffe'), *args, '--output', str(output)], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith('convert-caffe: error: ') and proc.stderr.count('\n') == 1, proc.stderr
    assert 'Traceback' not in proc.stdout + proc.stderr
    assert _snapshot(workdir) == before  # no output, no staging file, inputs untouched
    return proc.stderr.strip()


def _cut_on_a_layer_boundary(caffemodel: Path, path: Path, keep: int) -> None:
    """The first ``keep`` layers' bytes of the file, exactly: what a download that stopped there leaves."""
    net = read_caffemodel(caffemodel)
    cut = NetParameter()
    cut.CopyFrom(net)
    del cut.layer[keep:]
    data = caffemodel.read_bytes()
    assert data.startswith(cut.SerializeToString())  # a byte prefix of the file, not a re-encoding
    path.write_bytes(data[:len(cut.SerializeToString())])


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, sknet50_caffemodel) -> Path:
    """sknet50.caffemodel and its prototxt; sknet101.prototxt, another network's; a copy of the caffemodel cut
    in the middle of stage 4; a prototxt with one convolution's padding edited."""
    root = tmp_path_factory.mktemp('diagnoses')
    (root / 'sknet50.caffemodel').write_bytes(sknet50_caffemodel.read_bytes())
    prototxt = sknet50_caffemodel.with_suffix('.prototxt').read_text()
    (root / 'sknet50.prototxt').write_text(prototxt)
    scratch = tmp_path_factory.mktemp('sknet101')
    write_caffemodel(timm.create_model('sknet101'), scratch / 'sknet101.caffemodel', root / 'sknet101.prototxt')
    _cut_on_a_layer_boundary(root / 'sknet50.caffemodel', root / 'cut.caffemodel', keep=225)
    conv = 'name: "conv3_1/1x1_reduce"'
    assert prototxt.count(conv) == 1
    head, tail = prototxt.split(conv)
    (root / 'edited.prototxt').write_text(head + conv + tail.replace('stride: 1', 'stride: 2', 1))
    return root


@pytest.mark.parametrize('model', ['sknet50', 'sknet101'])
def test_caffemodel_cut_on_a_layer_boundary_says_download_it_again(workdir, model):
    err = _refused(workdir, 'cut.caffemodel', '--model', model)
    release_layers = {'sknet50': 187, 'sknet101': 374}[model]
    assert err.startswith(
        "convert-caffe: error: cut.caffemodel looks incomplete: it ends after layer 'conv4_1/1x1_proj/bn', without ")
    assert f"of the release's {release_layers} layers with weights (the first: 'conv4_2/1x1_reduce')" in err
    assert err.endswith('as a download cut short does; download it again')
    assert 'not an SKNet' not in err


def test_cut_caffemodel_with_its_prototxt_says_download_it_again(workdir):
    err = _refused(workdir, 'cut.caffemodel', '--model', 'sknet50', '--prototxt', 'sknet50.prototxt')
    assert 'cut.caffemodel looks incomplete' in err and err.endswith('download it again')


def test_prototxt_of_another_network_is_named(workdir):
    err = _refused(workdir, 'sknet50.caffemodel', '--model', 'sknet50', '--prototxt', 'sknet101.prototxt')
    assert err == (
        'convert-caffe: error: --prototxt sknet101.prototxt does not describe sknet50.caffemodel: 187 of its layers '
        "with weights have none in the caffemodel (first: 'conv4_7/1x1_reduce'); pass the prototxt released with "
        'this caffemodel, or leave out --prototxt if the caffemodel embeds its layers')
    assert '--model' not in err.split(': ', 2)[2]  # the prototxt, not --model, is blamed


def test_edited_prototxt_is_named_when_the_caffemodel_converts_without_it(workdir):
    """Same layer names, one stride changed: the graph check fails on the prototxt's graph; the caffemodel's own
    converts, so the prototxt is named as the cause, with the graph check's finding."""
    err = _refused(workdir, 'sknet50.caffemodel', '--model', 'sknet50', '--prototxt', 'edited.prototxt')
    assert err.startswith(
        'convert-caffe: error: --prototxt edited.prototxt disagrees with the caffemodel, which converts with the '
        'layers it embeds: leave out --prototxt, or pass the prototxt released with it (')
    assert 'conv3_1/1x1_reduce' in err and 'stride' in err


def test_renamed_layer_inside_the_caffemodel_is_the_graph_check_s_finding(workdir):
    """The rename test_convert_errors.py makes in a prototxt, made in the caffemodel itself: no prototxt to blame,
    and not a cut-short file (it holds a layer the release has not)."""
    net = read_caffemodel(workdir / 'sknet50.caffemodel')
    renamed = next(layer for layer in net.layer if layer.name == 'conv2_3/1x1_increase')
    renamed.name = 'conv2_3/1x1_expand'
    (workdir / 'renamed.caffemodel').write_bytes(net.SerializeToString())
    err = _refused(workdir, 'renamed.caffemodel', '--model', 'sknet50')
    assert "Convolution layer 'conv2_3/1x1_expand' stands where the release has 'conv2_3/1x1_increase'" in err
