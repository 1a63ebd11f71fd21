"""The package's import graph: no cycle, and the library never imports tools.

Every import statement counts, also those inside functions (a lazy import is
still a dependency), read from the source with `ast`, so this test imports
nothing it checks.
"""

import ast
import os

import pytest

pytestmark = pytest.mark.quick

PACKAGE = "simclr_jax"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), PACKAGE)
# Command entry points: `python -m simclr_jax.<name>` runs the tool of that
# name; they are not library modules.
ENTRY_POINTS = {f"{PACKAGE}.{n}" for n in ("main", "export", "evaluate",
                                           "convert", "benchmark",
                                           "visualize", "preview", "embed",
                                           "neighbors")}
TOOLS = f"{PACKAGE}.tools"


def _modules():
  """{module name: path} of every module of the package."""
  out = {}
  for root, _, files in os.walk(ROOT):
    for name in files:
      if not name.endswith(".py"):
        continue
      rel = os.path.relpath(os.path.join(root, name), os.path.dirname(ROOT))
      mod = rel[:-3].replace(os.sep, ".")
      out[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = (
          os.path.join(root, name))
  return out


def import_graph():
  """{module: set of package modules it imports}."""
  modules = _modules()
  graph = {}
  for mod, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in
                 modules else node.module for a in node.names]
      else:
        continue
      deps.update(n for n in names if n in modules and n != mod)
    graph[mod] = deps
  return graph


def find_cycles(graph):
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_checker_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycles(graph) == [["a", "b", "c"]]
  assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 30  # the walk saw the package
  assert find_cycles(graph) == []


def test_library_never_imports_the_tools():
  graph = import_graph()
  offenders = {mod: sorted(d for d in deps if d.startswith(TOOLS))
               for mod, deps in graph.items()
               if not mod.startswith(TOOLS) and mod not in ENTRY_POINTS}
  assert {m: d for m, d in offenders.items() if d} == {}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS - {f"{PACKAGE}.main"}))
def test_entry_points_are_a_few_lines(name):
  with open(_modules()[name]) as f:
    code = [l for l in f.read().splitlines() if l.strip() and
            not l.lstrip().startswith("#")]
  assert len(code) <= 12, name


def _mode_names():
  """The `name = "..."` of every mode class under simclr_jax/modes/."""
  names = set()
  for mod, path in _modules().items():
    if not mod.startswith(f"{PACKAGE}.modes."):
      continue
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
          and [getattr(t, "id", None) for t in node.targets] == ["name"]):
        names.add(node.value.value)
  return names


def _names_a_mode(node, names) -> bool:
  """Whether a comparison operand is a mode's name or `<config>.mode`."""
  if isinstance(node, ast.Constant):
    return node.value in names
  if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
    return any(_names_a_mode(e, names) for e in node.elts)
  return (isinstance(node, ast.Attribute) and node.attr == "mode" and
          isinstance(node.value, ast.Name) and
          node.value.id in ("config", "cfg", "c"))


def test_nothing_outside_the_modes_branches_on_a_mode_name():
  names = _mode_names()
  assert {"pretrain", "linear_eval", "finetune", "distill"} <= names
  offenders = []
  for mod, path in _modules().items():
    if mod.startswith(f"{PACKAGE}.modes"):
      continue
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Compare) and any(
          _names_a_mode(n, names) for n in [node.left] + node.comparators):
        offenders.append(f"{mod}:{node.lineno}")
  assert not offenders, offenders


# What the package's top level may hold besides the entry points: the public
# API, main and config, and the four modules the design guide places there
# (the mesh, multi-host start-up, the losses, the optimizer).
TOP_LEVEL = {"api", "config", "parallel", "distributed", "losses", "optim"}


def test_the_top_level_holds_the_api_config_and_entry_points_only():
  top = {mod.split(".")[1] for mod in _modules()
         if mod.count(".") == 1 and not mod.endswith("__init__")}
  packages = {mod.split(".")[1] for mod in _modules() if mod.count(".") >= 2}
  assert top - packages == (TOP_LEVEL |
                            {m.split(".")[1] for m in ENTRY_POINTS})
