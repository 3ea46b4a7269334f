"""The package's shape: imports form layers (no cycles), functions stay short, one weight loader."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'compact_flax'
MODULES = {p.stem: ast.parse(p.read_text()) for p in PACKAGE.glob('*.py')}


def _imports(tree):
  """compact_flax modules a module imports, at any depth (function-level imports included)."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == 'compact_flax':
        out.update(a.name for a in node.names)
      elif node.module.startswith('compact_flax.'):
        out.add(node.module.split('.')[1])
    elif isinstance(node, ast.Import):
      out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('compact_flax.'))
  return out & set(MODULES)


def test_no_import_cycle():
  graph = {name: _imports(tree) - {name} for name, tree in MODULES.items() if name != '__init__'}
  done, path = set(), []

  def visit(name):
    if name in path:
      pytest.fail('import cycle: ' + ' -> '.join(path[path.index(name):] + [name]))
    if name in done:
      return
    path.append(name)
    for dep in sorted(graph.get(name, ())):
      visit(dep)
    path.pop()
    done.add(name)

  for name in sorted(graph):
    visit(name)


def test_no_function_over_80_lines():
  long = [f'{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines'
          for name, tree in MODULES.items() for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > 80]
  assert not long, long


def test_train_and_evaluate_is_at_most_60_lines():
  (node,) = [n for n in ast.walk(MODULES['train'])
             if isinstance(n, ast.FunctionDef) and n.name == 'train_and_evaluate']
  assert node.end_lineno - node.lineno + 1 <= 60


@pytest.mark.parametrize('module', ['zoo', 'predict', 'train'])
def test_weights_are_loaded_through_checkpoint_load_model(module):
  """The zoo, predict and the trainer call `checkpoint.load_model`, not a loader of their own."""
  calls = {ast.unparse(n.func) for n in ast.walk(MODULES[module]) if isinstance(n, ast.Call)}
  assert 'checkpoint.load_model' in calls
  assert not calls & {'checkpoint.load_params', 'merge.fit_params', 'checkpoint.build_from_spec'}
