"""``timm-sknet validate -o`` killed (SIGKILL) at a seeded sweep of moments of a real run (``kill_sweep``): after every
kill the results file is absent or whole, the next run succeeds and removes what killed writers left in the folder,
and the user's files there (the data among them) keep every byte."""
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from kill_sweep import KillSweep, checksums, leftover_of_a_killed_writer, ours
from test_validate import IMAGES, NUM_CLASSES, _colour_classifier, _image

TIMM_SKNET = Path(sys.executable).parent / 'timm-sknet'


def _results(path: Path) -> list:
    return json.loads(path.read_text())['evaluations']


def test_results_killed_at_any_moment(tmp_path):
    work = tmp_path / 'work'
    for i, (folder, name) in enumerate(IMAGES[:2]):  # the smallest run: two images, one batch, 64 px
        (work / 'val' / folder).mkdir(parents=True, exist_ok=True)
        _image(name).save(work / 'val' / folder / f'{i}_{name}.png')
    (work / 'classes.txt').write_text(''.join(f'c{i}\n' for i in range(NUM_CLASSES)))
    weights = work / 'colour.safetensors'
    save_file(_colour_classifier().state_dict(), str(weights), metadata={'model_name': 'sknet26'})
    output = work / 'results.json'
    sweep = KillSweep([TIMM_SKNET, 'validate', '--model', 'sknet26', '--weights', weights, '--input-size', '64',
                       '--batch-size', '4', '--workers', '0', '--class-map', work / 'classes.txt', '--output', output,
                       work], None, [work])
    assert sweep.run_to_end().returncode == 0
    reference = _results(output)
    output.unlink()
    before = checksums(work)

    sweep.sweep(lambda: 'as before' if not output.exists() else 'written' if _results(output) == reference else
                'other results', output.unlink, spread=3, anchored=1)
    planted = leftover_of_a_killed_writer(work)

    final = sweep.run_to_end()
    assert final.returncode == 0, (final.stderr, sweep.report())
    assert _results(output) == reference and not planted.exists()
    assert ours(work) == [], sweep.report()
    assert checksums(work, skip=[output]) == before
