"""benchmarks/bench_sk.py's promises that do not need a timing run: model variants, errors, the summary of --runs."""
import pytest
import torch
from torch import nn

from timm_sknet.io.errors import UserError
from timm_sknet.models.sk_conv import SKConv

from benchmarks import bench_sk


@pytest.fixture(scope='module')
def bench():
    return bench_sk


def _sk_convs(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, SKConv)]


def test_variants_build_what_they_say(bench):
    cpu = torch.device('cpu')
    plain_sum = bench.build_model('sknet26+sum:deploy', cpu)
    assert all(sk.attn is None and sk.num_paths == 2 for sk in _sk_convs(plain_sum))
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in plain_sum.modules())
    one_path = bench.build_model('sknet26+m1', cpu)
    assert all(sk.num_paths == 1 and sk.attn is None for sk in _sk_convs(one_path))
    assert not one_path.training


@pytest.mark.parametrize('name, message', [
    ('sknet26+foo', "unknown variant 'foo' in --models; choose from ['m1', 'sum']"),
    ('resnext26ts+sum', 'resnext26ts has no variant'),
    ('sknet26:fold', "unknown transform 'fold'"),
])
def test_bad_model_specs_are_refused_in_one_line(bench, name, message):
    with pytest.raises(UserError, match=message.replace('[', r'\[').replace(']', r'\]')) as info:
        bench.build_model(name, torch.device('cpu'))
    assert '\n' not in str(info.value)


def test_runs_must_be_positive(bench):
    with pytest.raises(UserError, match='--runs must be at least 1, got 0'):
        bench.parse_args(['--runs', '0'])


def test_runs_summary_judges_the_median_and_lists_every_run(bench):
    def run(speed: float, memory: float):
        return [dict(case='eval b8 eager', name='a / b', value=speed, minimum=1.5),
                dict(case='train b8 eager', name='peak tensor memory a / b', value=memory, below=1.0)]

    lines = bench.summarise_runs([run(1.49, 0.9), run(1.6, 1.1), run(1.52, 0.95)])
    assert lines == [
        'eval b8 eager: a / b = 1.520x (goal >= 1.5x: met); runs: 1.490, 1.600, 1.520',
        'train b8 eager: peak tensor memory a / b = 0.950x (goal < 1.0x: met); runs: 0.900, 1.100, 0.950',
    ]
    assert 'NOT met' in bench.summarise_runs([run(1.49, 1.0)] * 2)[0]
    assert 'NOT met' in bench.summarise_runs([run(1.49, 1.0)] * 2)[1]
