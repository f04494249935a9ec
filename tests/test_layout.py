"""The package's layout is its architecture: the method and the tools never import the bundled
experiments, and no two modules import each other (directly or through others)."""

import ast
import pathlib

import alrao_jax
from conftest import fresh_python

PACKAGE = pathlib.Path(alrao_jax.__file__).parent
METHOD = (
  "checks",
  "rates",
  "transform",
  "head",
  "nnx",
  "switch",
  "loss",
  "steps",
  "sharding",
  "predict",
)
AROUND = (
  "loop",
  "epochs",
  "evaluation",
  "run_checks",
  "checkpoint",
  "splits",
  "strict_json",
  "defaults",
)
TOOLS = ("lr_find", "suggest_lr", "sweep", "tune", "screen", "layer_schedule")


def _imports() -> dict[str, set[str]]:
  """module -> the alrao_jax modules it imports (at any level), names relative to the package."""
  graph = {}
  for path in PACKAGE.rglob("*.py"):
    name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alrao_jax"):
        modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        modules = [a.name for a in node.names if a.name.startswith("alrao_jax")]
      else:
        continue
      for module in modules:
        relative = module.removeprefix("alrao_jax").lstrip(".")
        if (PACKAGE / f"{relative.replace('.', '/')}.py").exists():
          found.add(relative)
    graph[name] = found - {name}
  return graph


def test_the_method_and_the_tools_never_import_the_experiments():
  graph = _imports()
  for module in METHOD + AROUND + TOOLS:
    assert module in graph, module
    bundled = sorted(m for m in graph[module] if m.startswith("experiments"))
    assert not bundled, f"{module} imports {bundled}"
  for module in METHOD + AROUND:
    assert not graph[module] & set(TOOLS), module  # the tools sit beside the method
  assert graph["checks"] == set()  # everything may import the checks
  assert graph["defaults"] == set()  # the parser reads it without starting JAX (test_cli)


def test_no_import_cycles():
  graph = _imports()
  state = {}

  def visit(module, stack):
    state[module] = "open"
    for other in graph.get(module, ()):
      if state.get(other) == "open":
        raise AssertionError(f"import cycle: {' -> '.join([*stack, module, other])}")
      if other not in state:
        visit(other, [*stack, module])
    state[module] = "done"

  for module in graph:
    if module not in state:
      visit(module, [])


def test_the_public_api():
  for name in (
    "fit",
    "predict",
    "save_checkpoint",
    "restore_checkpoint",
    "Splits",
    "split_arrays",
    "lr_find",
    "suggest_lr",
    "sweep",
    "tune",
    "layer_depths",
    "scale_by_layer_schedule",
    "discriminative_schedule",
    "smith_schedule",
    "screen",
    "alrao_sgd",
    "AlraoHead",
    "sharding",
  ):
    assert name in alrao_jax.__all__ and hasattr(alrao_jax, name), name
  for name in (
    "make_mesh",
    "state_shardings",
    "create_sharded_train_state",
    "shard_train_state",
    "shard_train_step",
    "shard_eval_step",
    "shard_nnx",
    "shard_batch",
    "shard_process_batch",
    "replicate",
    "collectives",
  ):
    assert name in alrao_jax.sharding.__all__ and hasattr(alrao_jax.sharding, name), name


def test_a_public_name_loads_its_own_module_only_and_tools_stay_functions():
  # One name loads its module, not every public one (the CLI's first state paid ~0.8 s for
  # the heads and tools); a module imported first does not hide the function named like it.
  script = (
    "import sys\n"
    "from alrao_jax import sharding\n"
    "print(sorted(m for m in ('alrao_jax.tune', 'alrao_jax.sweep', 'alrao_jax.nnx',"
    " 'alrao_jax.lr_find') if m in sys.modules))\n"
    "import alrao_jax.tune, alrao_jax.sweep\n"
    "import alrao_jax\n"
    "print([type(getattr(alrao_jax, n)).__name__ for n in ('tune', 'sweep', 'lr_find')])\n"
    "print(all(getattr(alrao_jax, n) is not None for n in alrao_jax.__all__))\n"
  )
  said, _ = fresh_python(script)
  assert said == ["[]", "['function', 'function', 'function']", "True"]


def test_the_method_and_its_loop_import_flax_nnx_only_for_an_nnx_object():
  # a linen user's import (and the command line's start) skips flax.nnx, a tenth of a second;
  # is_nnx sees NNX objects once flax.nnx is imported, and linen ones never
  script = (
    "import sys\n"
    "import alrao_jax.loop, alrao_jax.steps, alrao_jax.sweep, alrao_jax.tune, alrao_jax.predict\n"
    "import alrao_jax.checkpoint, alrao_jax.sharding, alrao_jax.lr_find, alrao_jax.suggest_lr\n"
    "print('flax.nnx' in sys.modules)\n"
    "import flax.linen as nn, optax\n"
    "from flax import nnx\n"
    "from alrao_jax.nnx_types import is_nnx\n"
    "linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))\n"
    "optimizer = nnx.Optimizer(linear, optax.sgd(0.1), wrt=nnx.Param)\n"
    "print(is_nnx(linear), is_nnx(optimizer, 'Optimizer'), is_nnx(linear.kernel, 'Variable'))\n"
    "print(is_nnx(nn.Dense(3)), is_nnx(linear, 'Optimizer'), is_nnx(linear.kernel[...], 'Param'))\n"
  )
  said, _ = fresh_python(script)
  assert said == ["False", "True True True", "False False False"]


DISTRIBUTIONS = {"orbax": "orbax-checkpoint", "sklearn": "scikit-learn"}  # import -> distribution


def _third_party(path: pathlib.Path) -> tuple[set[str], set[str]]:
  """(imported at module level, imported inside functions) top-level names outside the
  standard library and the package."""
  import sys

  tree = ast.parse(path.read_text())
  top = {id(node) for node in tree.body}
  found: tuple[set[str], set[str]] = (set(), set())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    else:
      continue
    for name in names:
      root = name.split(".")[0]
      if root not in sys.stdlib_module_names and root not in ("alrao_jax", "__future__"):
        found[0 if id(node) in top else 1].add(DISTRIBUTIONS.get(root, root))
  return found


def test_the_declared_dependencies_are_what_the_package_imports():
  import tomllib

  project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]

  def names(requirements):
    return {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in requirements}

  required = names(project["dependencies"])
  extras = names(project["optional-dependencies"]["cli"])
  imported, used = set(), set()
  for path in PACKAGE.rglob("*.py"):
    eager, lazy = _third_party(path)
    experiments = "experiments" in path.relative_to(PACKAGE).parts
    assert eager <= (required | extras if experiments else required), (path, eager - required)
    assert lazy <= required | extras, (path, lazy - required - extras)
    imported |= eager | lazy
    used |= eager if not experiments else set()
  assert required - {"jaxlib"} <= imported, required - imported  # nothing declared for nothing
  assert used <= required
