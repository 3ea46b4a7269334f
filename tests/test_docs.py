"""The documentation stays true to the code: every command shown in README.md and docs/ names a
file, flag and config field that exist; every Python block compiles and names what the package
has; every relative link and anchor resolves; docs/performance.md is what its data gives."""

import ast
import glob
import importlib
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.M | re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def _rel(path):
  return os.path.relpath(path, ROOT)


def code_blocks(kind):
  """(page, block text) of every fenced block of `kind` ('bash' or 'python')."""
  for page in PAGES:
    with open(page) as f:
      for lang, body in FENCE.findall(f.read()):
        if lang == kind:
          yield page, body


def commands():
  """(page, argv) of every shell command: continuation lines joined, comments dropped, `&&` split."""
  for page, body in code_blocks('bash'):
    body = body.replace('\\\n', ' ')
    for line in body.splitlines():
      line = line.split(' #', 1)[0] if not line.lstrip().startswith('#') else ''
      for part in line.split('&&'):
        if part.strip():
          yield page, shlex.split(part.replace('$RANK', '0'))


def _script_for(argv):
  """The repository file a `python ...` command runs, or None when it is not the project's."""
  if argv[1] == '-m':
    module = argv[2]
    if not module.startswith('compact_flax'):
      return None
    return os.path.join(ROOT, *module.split('.')) + '.py', argv[3:]
  if argv[1] == '-c':
    return None
  return os.path.join(ROOT, argv[1]), argv[2:]


def _defines_flag(source: str, name: str) -> bool:
  return (f"'--{name}'" in source or f'"--{name}"' in source
          or re.search(rf"DEFINE_\w+\(\s*['\"]{re.escape(name)}['\"]", source) is not None)


def _config_has(config, path: str) -> bool:
  node = config
  for key in path.split('.'):
    try:
      node = node[key]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


PYTHON_COMMANDS = [(p, a) for p, a in commands() if a[0] == 'python' and len(a) > 1]


def test_the_docs_show_commands_and_python():
  assert len(PYTHON_COMMANDS) > 30
  assert len(list(code_blocks('python'))) > 8


@pytest.mark.parametrize('page,argv', PYTHON_COMMANDS,
                         ids=[f'{_rel(p)}:{" ".join(a[1:3])}' for p, a in PYTHON_COMMANDS])
def test_each_command_names_files_flags_and_fields_that_exist(page, argv):
  found = _script_for(argv)
  if found is None:
    return
  script, args = found
  where = f'{_rel(page)}: {" ".join(argv)}'
  assert os.path.isfile(script), f'{where}: no file {_rel(script)}'
  with open(script) as f:
    source = f.read()
  config_path = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
  config = None
  if config_path is not None:
    assert os.path.isfile(os.path.join(ROOT, config_path)), f'{where}: no config {config_path}'
    config = runpy.run_path(os.path.join(ROOT, config_path))['get_config']()
  for arg in args:
    if not arg.startswith('--'):
      if '/' in arg and not arg.startswith(('/', '~', '$')) and '://' not in arg:
        assert os.path.exists(os.path.join(ROOT, arg)), f'{where}: no file {arg}'
      continue
    name = arg[2:].split('=', 1)[0]
    if name.startswith('config.'):
      assert config is not None, f'{where}: --{name} without --config='
      assert _config_has(config, name[len('config.'):]), f'{where}: the config has no {name}'
      continue
    if name.startswith('no') and not _defines_flag(source, name):
      name = name[2:]  # absl's --noflag
    assert _defines_flag(source, name), f'{where}: {_rel(script)} defines no --{name}'


def test_pip_extras_named_in_the_docs_exist():
  with open(os.path.join(ROOT, 'setup.py')) as f:
    setup = f.read()
  for page, argv in commands():
    if argv[:2] == ['pip', 'install']:
      for arg in argv:
        match = re.fullmatch(r'\.\[([\w,]+)\]', arg)
        for extra in (match.group(1).split(',') if match else []):
          assert f"'{extra}':" in setup, f'{_rel(page)}: setup.py has no extra {extra}'


PYTHON_BLOCKS = list(code_blocks('python'))


@pytest.mark.parametrize('page,body', PYTHON_BLOCKS,
                         ids=[f'{_rel(p)}:{i}' for i, (p, _) in enumerate(PYTHON_BLOCKS)])
def test_each_python_block_compiles_and_names_what_exists(page, body):
  tree = ast.parse(body, filename=_rel(page))
  imported = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] in (
        'compact_flax', 'configs'):
      module = importlib.import_module(node.module)
      for alias in node.names:
        assert hasattr(module, alias.name) or importlib.util.find_spec(
            f'{node.module}.{alias.name}'), f'{_rel(page)}: {node.module} has no {alias.name}'
        imported[alias.asname or alias.name] = getattr(module, alias.name, None)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name == 'compact_flax':
          imported['compact_flax'] = importlib.import_module('compact_flax')
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and imported.get(node.value.id) is not None
        and getattr(imported[node.value.id], '__name__', '').startswith(('compact_flax',
                                                                        'configs'))):
      owner = imported[node.value.id]
      assert hasattr(owner, node.attr), f'{_rel(page)}: {owner.__name__} has no {node.attr}'


def _anchors(page):
  with open(page) as f:
    text = FENCE.sub('', f.read())
  slugs = set()
  for heading in re.findall(r'^#+ (.+)$', text, re.M):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
    slugs.add(slug)
  return slugs


LINKS = [(page, target) for page in PAGES
         for target in LINK.findall(FENCE.sub('', open(page).read()))
         if not re.match(r'[a-z]+:', target)]


def test_the_docs_link_to_each_other():
  assert len(LINKS) > 40


@pytest.mark.parametrize('page,target', LINKS, ids=[f'{_rel(p)}->{t}' for p, t in LINKS])
def test_each_relative_link_resolves(page, target):
  path, _, anchor = target.partition('#')
  resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
  assert os.path.exists(resolved), f'{_rel(page)}: the link {target} points nowhere'
  if anchor:
    assert anchor in _anchors(resolved), f'{_rel(page)}: {_rel(resolved)} has no #{anchor}'


def test_every_docs_page_is_linked_from_the_readme():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  for page in PAGES[1:]:
    assert f'(docs/{os.path.basename(page)})' in readme, f'README.md does not link {_rel(page)}'


def test_the_readme_is_a_short_guide():
  with open(os.path.join(ROOT, 'README.md')) as f:
    assert len(f.read().splitlines()) <= 200


def test_the_performance_page_is_what_the_results_files_give():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'render_performance.py'),
                         '--check'], capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
