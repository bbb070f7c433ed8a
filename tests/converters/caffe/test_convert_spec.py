"""convert-caffe checks caffemodels against architecture specs (JSON shipped with the package, read without
torch); each must equal what ``converters.caffe.spec`` generates from the timm model, so it cannot drift."""
import sys

import pytest
import timm

from converters.caffe import spec as spec_module
from converters.caffe.convert import CAFFE_TAG, SPEC_DIR, convertible_models, target_spec
from converters.caffe.spec import architecture_spec, spec_text
from timm_sknet.io.errors import UserError


def test_a_spec_ships_for_each_model_with_the_release_convention():
    assert convertible_models() == sorted({name.split('.')[0] for name in timm.list_pretrained(f'*.{CAFFE_TAG}')})
    assert convertible_models() == ['sknet101', 'sknet50']


@pytest.mark.parametrize('model_name', ['sknet50', 'sknet101'])
def test_shipped_spec_equals_the_timm_model(model_name):
    model = timm.create_model(f'{model_name}.{CAFFE_TAG}', device='meta')
    generated = architecture_spec(model)
    assert target_spec(model_name) == generated
    assert (SPEC_DIR / f'{model_name}.json').read_text() == spec_text(generated)  # as --write leaves it
    assert list(generated['tensors']) == list(model.state_dict())  # state-dict order: the output's


def test_spec_holds_what_the_conversion_checks():
    spec = target_spec('sknet101')
    assert spec['architecture'] == 'sknet101' and spec['stage_units'] == [3, 4, 23, 3]
    assert spec['head_pool'] == [7, 7]
    assert spec['modules']['maxpool'] == {
        'type': 'MaxPool2d', 'kernel': [3, 3], 'stride': [2, 2], 'padding': [0, 0], 'ceil_mode': True}
    assert spec['modules']['layer2.0.conv2.paths.1.conv'] == {
        'type': 'Conv2d', 'kernel': [3, 3], 'stride': [2, 2], 'padding': [2, 2], 'dilation': [2, 2], 'groups': 32}
    assert spec['modules']['layer1.0.conv2.attn.bn'] == {'type': 'BatchNorm2d', 'eps': 1e-5}
    assert spec['modules']['fc'] == {'type': 'Linear'}
    assert spec['tensors']['layer2.0.conv2.attn.fc_reduce.weight'] == [16, 256, 1, 1]  # the release's d = 16
    assert spec['tensors']['layer2.0.conv2.attn.bn.num_batches_tracked'] == []


def test_a_changed_architecture_no_longer_matches_its_spec():
    """Negative control: the equality above fails when the model changes, e.g. its fuse widths or stem pool."""
    shipped = target_spec('sknet50')
    wider = timm.create_model(f'sknet50.{CAFFE_TAG}', device='meta', sk_attn_channels=(32, 32, 32, 32))
    assert architecture_spec(wider)['tensors'] != shipped['tensors']
    timm_pool = timm.create_model(f'sknet50.{CAFFE_TAG}', device='meta', stem_pool='max')
    assert architecture_spec(timm_pool)['modules']['maxpool'] != shipped['modules']['maxpool']


def test_unknown_model_has_no_spec():
    with pytest.raises(UserError, match=r"resnet50 is not a model in the Caffe release's format; choose one of"):
        target_spec('resnet50')


def test_regenerating_writes_the_shipped_specs_and_drops_stale_ones(tmp_path, monkeypatch, capsys):
    (tmp_path / 'sknet26.json').write_text('{}')
    (tmp_path / 'sknet50.json').write_text('{}')
    monkeypatch.setattr(spec_module, 'SPEC_DIR', tmp_path)
    monkeypatch.setattr(sys, 'argv', ['python -m converters.caffe.spec'])
    assert spec_module.main() == 1
    assert 'regenerate them: python -m converters.caffe.spec --write' in capsys.readouterr().out
    monkeypatch.setattr(sys, 'argv', ['python -m converters.caffe.spec', '--write'])
    assert spec_module.main() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sknet101.json', 'sknet50.json']
    for path in tmp_path.iterdir():
        assert path.read_text() == (SPEC_DIR / path.name).read_text()
    monkeypatch.setattr(sys, 'argv', ['python -m converters.caffe.spec'])
    assert spec_module.main() == 0
