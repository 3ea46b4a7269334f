import os
import pathlib
import tempfile

import pytest

# One JAX compilation cache for the whole run, subprocesses included: most tests compile the same
# small training steps, and on a 2-core CI machine compiling dominates their time.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='compact_flax_jit_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# The CPU alone, even where a TPU or GPU plugin is installed (the compile tests target TPUs
# through topologies, which need no backend).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

FIXTURES = pathlib.Path(os.environ.get(
    'COMPACT_FLAX_FIXTURES',
    pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'fixtures' / 'official_torch'))


@pytest.fixture(scope='session')
def fixtures_dir():
  if not FIXTURES.is_dir():
    pytest.skip(f'official checkpoint fixtures not found at {FIXTURES} (set COMPACT_FLAX_FIXTURES)')
  return FIXTURES


@pytest.fixture(scope='session')
def text_fixtures_dir():
  d = pathlib.Path(os.environ.get('COMPACT_FLAX_TEXT_FIXTURES', FIXTURES.parent / 'official_text'))
  if not d.is_dir():
    pytest.skip(f'official text fixtures not found at {d} (set COMPACT_FLAX_TEXT_FIXTURES)')
  return d
