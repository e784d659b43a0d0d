"""The layout's rules, read from the source: layers import downwards only, no cycles,
and importing the library changes no global state."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom to top. A module may import its own layer (no cycles) and the layers below.
LAYERS = (
    ("runtime", ("vaegan_jax.runtime",)),
    ("data and kernels", ("vaegan_jax.data", "vaegan_jax.cpu")),
    ("model", ("vaegan_jax.layers", "vaegan_jax.models", "vaegan_jax.losses",
               "vaegan_jax.routing", "vaegan_jax.optim", "vaegan_jax.reference",
               "vaegan_jax.train_step", "vaegan_jax.input_pipeline")),
    ("inference and the classifier", ("vaegan_jax.sampling", "vaegan_jax.sampling_outputs",
                                      "vaegan_jax.classifier")),
    ("evaluation", ("vaegan_jax.evaluation",)),
    ("training", ("vaegan_jax.train_config", "vaegan_jax.train")),
    ("studies", ("vaegan_jax.studies",)),
    ("binaries", ("experiments",)),
)


def _modules() -> dict[str, str]:
  found = {}
  for top in ("vaegan_jax", "experiments"):
    for d, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(d, f)
          name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          found[name.removesuffix(".__init__")] = path
  return found


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
  """The project modules ``name`` imports anywhere in its file (function bodies too)."""
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      for a in node.names:
        full = f"{base}.{a.name}"
        out.add(full if full in modules else base)
  return {m for m in out if m in modules and m != name}


def _layer(name: str) -> int:
  for i, (_, prefixes) in enumerate(LAYERS):
    if any(name == p or name.startswith(p + ".") for p in prefixes):
      return i
  if name == "vaegan_jax":
    return 0
  raise AssertionError(f"{name} is in no layer: add it to LAYERS")


@pytest.fixture(scope="module")
def graph():
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def _upward(graph) -> list[str]:
  return [f"{m} ({LAYERS[_layer(m)][0]}) -> {d} ({LAYERS[_layer(d)][0]})"
          for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)]


def _cycles(graph) -> list[list[str]]:
  """Tarjan's strongly connected components of more than one module."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return cycles


def test_every_module_has_a_layer_and_imports_only_downwards(graph):
  assert not _upward(graph)


def test_no_import_cycles(graph):
  """A package's ``__init__`` re-exporting its submodules is an edge too, so a
  submodule importing its own package is a cycle."""
  assert not _cycles(graph)


def test_only_the_binaries_import_the_cli(graph):
  """``runtime.cli`` defines a flag at import: a library that imported it would change
  every program that imports the library."""
  importers = sorted(m for m, deps in graph.items() if "vaegan_jax.runtime.cli" in deps)
  assert importers and all(m.startswith("experiments.") for m in importers), importers


def test_the_checks_find_a_planted_cycle_and_a_planted_upward_import(graph):
  planted = {m: set(d) for m, d in graph.items()}
  planted["vaegan_jax.runtime.errors"].add("vaegan_jax.runtime.checkpoint")
  assert ["vaegan_jax.runtime.checkpoint", "vaegan_jax.runtime.errors"] in _cycles(planted)
  planted["vaegan_jax.runtime.errors"].add("vaegan_jax.train")
  assert _upward(planted) == ["vaegan_jax.runtime.errors (runtime) -> vaegan_jax.train (training)"]


def test_importing_the_library_changes_no_global_state():
  """Log filters and hooks are the binaries' (``cli.run``); a notebook that imports
  the library keeps its own."""
  code = """
import logging, sys
from absl import logging as absl_logging
hook, handler = sys.unraisablehook, absl_logging.get_absl_handler()
before = (list(handler.filters), list(absl_logging.get_absl_logger().filters),
          list(logging.getLogger("asyncio").filters))
import vaegan_jax.runtime.checkpoint, vaegan_jax.runtime.cli, vaegan_jax.train, vaegan_jax.sampling
import vaegan_jax.evaluation, vaegan_jax.classifier, vaegan_jax.studies.compare
after = (list(handler.filters), list(absl_logging.get_absl_logger().filters),
         list(logging.getLogger("asyncio").filters))
assert sys.unraisablehook is hook, "sys.unraisablehook changed at import"
assert before == after, (before, after)
from vaegan_jax.runtime import io_errors
io_errors.install_quiet_hooks()
assert sys.unraisablehook is not hook  # the check above can see a change
print("ok")
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ))
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
