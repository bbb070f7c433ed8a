from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    """The steering repo's shared/ beside this checkout (release facts, sknet50.prototxt)."""
    if not SHARED.is_dir():
        pytest.skip(f'{SHARED} is absent: the released SKNet-50 prototxt fixture lives there')
    return SHARED
