import os
import pathlib

import pytest

FIXTURES = pathlib.Path(os.environ.get(
    'COMPACT_FLAX_FIXTURES',
    pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'fixtures' / 'official_torch'))


@pytest.fixture(scope='session')
def fixtures_dir():
  if not FIXTURES.is_dir():
    pytest.skip(f'official checkpoint fixtures not found at {FIXTURES} (set COMPACT_FLAX_FIXTURES)')
  return FIXTURES
