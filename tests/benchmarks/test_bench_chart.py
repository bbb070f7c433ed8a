"""bench_sk --chart: the speed chart and its numbers come from what the run measured (no timing here: the samples
are made up and passed in as the timing loop would)."""
import json

import pytest

from benchmarks import bench_sk
from benchmarks.chart import chart_data, markdown_table, write_chart
from benchmarks.timing import Case
from timm_sknet.io.errors import UserError


def _samples():
    """Seconds per iteration: sknet50 is faster in channels_last, timm's SK model in NCHW; compile speeds both up."""
    per_round = {('nchw', 'sknet50'): 0.4, ('channels_last', 'sknet50'): 0.2,
                 ('nchw', 'skresnext50_32x4d'): 0.4, ('channels_last', 'skresnext50_32x4d'): 0.8}
    samples = {}
    for backend, factor in (('eager', 1.0), ('compile', 0.5)):
        for (fmt, model), seconds in per_round.items():
            samples[Case('eval', 8, fmt, backend), model] = [seconds * factor] * 3
    return samples


def test_the_chart_shows_each_model_in_its_faster_format_eager_beside_compile():
    samples = _samples()
    cases = sorted({case for case, _ in samples}, key=str)
    speeds = bench_sk.fastest_speeds(['sknet50', 'skresnext50_32x4d'], cases, samples)
    assert list(speeds) == ['eval b8'] and list(speeds['eval b8']) == ['eager', 'compile']
    assert speeds['eval b8']['eager'] == {'sknet50': {'img_s': 40.0, 'format': 'channels_last'},
                                          'skresnext50_32x4d': {'img_s': 20.0, 'format': 'nchw'}}
    assert speeds['eval b8']['compile']['sknet50'] == {'img_s': 80.0, 'format': 'channels_last'}
    data = chart_data(speeds, 'a machine', ['--compile', '--chart', 'speed.png'], ('1.0 / 1.0 / 1.0', '2.0 / 1.0 / 1.0'))
    assert markdown_table(data).splitlines() == [
        '| model | eval b8 eager | eval b8 compile |',
        '|---|---|---|',
        '| `sknet50` | 40.00 (channels_last) | 80.00 (channels_last) |',
        '| `skresnext50_32x4d` | 20.00 (nchw) | 40.00 (nchw) |',
        '',
        'Measured by `python -m benchmarks.bench_sk --compile --chart speed.png` on a machine; load average '
        '(1/5/15 min) 1.0 / 1.0 / 1.0 at the start, 2.0 / 1.0 / 1.0 at the end.']


def test_the_chart_and_its_numbers_are_written_together(tmp_path):
    samples = _samples()
    speeds = bench_sk.fastest_speeds(['sknet50'], sorted({c for c, _ in samples}, key=str), samples)
    data = chart_data(speeds, 'a machine', ['--chart', 'speed.png'], ('0', '0'))
    chart = tmp_path / 'speed.png'
    write_chart(chart, data, force=False)
    assert chart.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert json.loads((tmp_path / 'speed.json').read_text()) == data
    before = chart.read_bytes()
    with pytest.raises(UserError, match='nothing was written; pass --force'):
        write_chart(chart, data, force=False)
    assert chart.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['speed.json', 'speed.png']


@pytest.mark.parametrize('argv, message', [
    (['--chart', 'speed.svg'], 'give a .png file name'),
    (['--chart', 'speed.png', '--runs', '2'], 'leave out --runs'),
])
def test_chart_options_are_checked_before_any_timing(argv, message):
    with pytest.raises(UserError, match=message):
        bench_sk.parse_args(argv)


def test_an_existing_chart_is_replaced_only_with_force(tmp_path):
    (tmp_path / 'speed.json').write_text('{}')
    with pytest.raises(UserError, match='already exists'):
        bench_sk.parse_args(['--chart', str(tmp_path / 'speed.png')])
    assert bench_sk.parse_args(['--chart', str(tmp_path / 'speed.png'), '--force']).force
