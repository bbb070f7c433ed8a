"""README.md and docs/*.md are tests too: their examples run through Sybil (tests/docs_harness; how a page is
tested is in docs/contributing.md). This file sits at the root because pytest asks only the conftests above a file
whether to collect it."""
from typing import Iterator

import pytest

from docs_harness import SYBIL
from docs_harness.context import DocsContext

pytest_collect_file = SYBIL.pytest()


@pytest.fixture(scope='session')
def docs_context(tmp_path_factory) -> Iterator[DocsContext]:
    context = DocsContext(tmp_path_factory.mktemp('docs'))
    try:
        yield context
    finally:
        context.close()
