"""convert-caffe killed (SIGKILL) at a seeded sweep of moments of a real run (``kill_sweep``), with --output,
--install and --install --force: after every kill the output is as before or whole, the next run succeeds and
removes what the killed ones left (a temporary left by a writer killed mid-write included), ``timm-sknet
installed`` lists those leftovers and then none, and the user's files and an earlier install keep every byte."""
import os
import shutil
import sys
from pathlib import Path

from kill_sweep import (
    KillSweep, checksums, converted, install_survives_kills, leftover_of_a_killed_writer, ours, slot_state)
from timm_sknet.io.locks import leftovers

CONVERT_CAFFE = Path(sys.executable).parent / 'convert-caffe'
SLOT = 'sknet50.caffe_in1k'


def _users_folder(tmp_path: Path) -> Path:
    work = tmp_path / 'work'
    (work / 'data').mkdir(parents=True)
    (work / 'notes.txt').write_text('what I converted and why\n')
    (work / 'data' / 'labels.txt').write_text('tench\ngoldfish\n')
    (work / 'earlier.safetensors').write_bytes(os.urandom(4096))
    return work


def test_output_killed_at_any_moment(sknet50_caffemodel, tmp_path):
    work = _users_folder(tmp_path)
    output = work / 'sknet50.safetensors'
    sweep = KillSweep([CONVERT_CAFFE, sknet50_caffemodel, '--model', 'sknet50', '--output', output], None, [work])
    assert sweep.run_to_end().returncode == 0
    reference = converted(output)
    output.unlink()
    before = checksums(work)

    sweep.sweep(lambda: 'written' if output.exists() and converted(output) == reference else
                'as before' if not output.exists() else 'another file', output.unlink, spread=5, anchored=2)
    assert sweep.killed_mid_write(), sweep.report()
    planted = leftover_of_a_killed_writer(work)
    assert planted in [leftover.path for leftover in leftovers(work) if not leftover.live]

    final = sweep.run_to_end()
    assert final.returncode == 0, (final.stderr, sweep.report())
    assert converted(output) == reference
    assert ours(work) == [], sweep.report()  # no temporary, no lock file
    assert checksums(work, skip=[output]) == before


def test_install_killed_at_any_moment(sknet50_caffemodel, tmp_path, monkeypatch, capsys):
    install_survives_kills([CONVERT_CAFFE, sknet50_caffemodel, '--model', 'sknet50', '--install'],
                           tmp_path / 'store' / SLOT, monkeypatch, capsys, spread=5, anchored=2)


def test_install_force_killed_leaves_the_old_copy_or_the_new_one(sknet50_caffemodel, tmp_path, monkeypatch):
    """--force over an installed copy swaps the slot in one step: after any kill the slot holds the old install or
    the new one, whole, never neither."""
    store = tmp_path / 'store'
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    old, new = tmp_path / 'old.caffemodel', tmp_path / 'new.caffemodel'  # their conversions record their names
    os.link(sknet50_caffemodel, old)
    os.link(sknet50_caffemodel, new)
    first = KillSweep([CONVERT_CAFFE, old, '--model', 'sknet50', '--install'], None, [store]).run_to_end()
    assert first.returncode == 0
    slot = store / SLOT
    saved = tmp_path / 'saved-slot'
    shutil.copytree(slot, saved, copy_function=os.link)  # nothing writes into an installed file: links will do
    old_install = checksums(slot)

    sweep = KillSweep([CONVERT_CAFFE, new, '--model', 'sknet50', '--install', '--force'], None, [store])
    assert sweep.run_to_end().returncode == 0
    reference = converted(slot / 'model.safetensors')
    assert reference[0]['source_file'] == 'new.caffemodel'

    def restore_old():
        shutil.rmtree(slot)
        shutil.copytree(saved, slot, copy_function=os.link)

    def state() -> str:
        if not slot.exists():
            return 'gone: neither the old install nor the new one'
        return 'as before' if checksums(slot) == old_install else slot_state(slot, reference)

    restore_old()
    sweep.sweep(state, restore_old, spread=5, anchored=2)
    final = sweep.run_to_end()
    assert final.returncode == 0, (final.stderr, sweep.report())
    assert slot_state(slot, reference) == 'written'
    assert ours(store) == [] and sorted(os.listdir(store)) == ['.locks', SLOT], sweep.report()
