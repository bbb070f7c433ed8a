"""``make demo`` (python -m converters.caffe.demo) works from a fresh folder and says what a user needs to know."""
import subprocess
import sys


def test_demo_converts_and_verifies_a_generated_release_caffemodel(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'converters.caffe.demo'], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'github.com/implus/SKNet' in out and 'no licence file' in out
    assert '$ convert-caffe out/demo/sknet50_random.caffemodel --model sknet50' in out
    assert 'verify: opencv' in out and 'same top-5 classes on 2/2 images' in out
    assert "round trip: the 443 weight and BN tensors converted back from the caffemodel equal the generated " \
           "model's: max |diff| 0\n" in out
    assert sorted(p.name for p in (tmp_path / 'out' / 'demo').iterdir()) == [
        'sknet50.safetensors', 'sknet50_random.caffemodel', 'sknet50_random.prototxt']
