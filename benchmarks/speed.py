"""Speed and memory of an Alrao training step, next to plain optax and a naive Alrao.

Usage:
  python benchmarks/speed.py            # full run, writes benchmarks/results/speed.md
  python benchmarks/speed.py --quick    # seconds, for CI: fewer steps and sizes, no file

Every ratio is measured in one process, the variants interleaved round by round, the
median of per-step times (each step blocked with ``block_until_ready``) after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import pathlib
import re
import statistics
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import alrao_jax
from alrao_jax.experiments.models import MLP, CharLSTM, DigitsCNN
from alrao_jax.head import AlraoHead
from alrao_jax.steps import TrainState

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from header import command_line, machine, write_results

BATCH = 32
DEFAULT_OUT = "benchmarks/results/speed.md"
LR_MIN, LR_MAX = 1e-5, 10.0


class Case:
  """One model and its inputs, in an Alrao version and a plain version."""

  def __init__(
    self,
    name: str,
    build: Callable[[int | None], nn.Module],
    x: jax.Array,
    y: jax.Array,
    num_copies: int,
    lr: tuple[float, float] = (LR_MIN, LR_MAX),
  ):
    self.name, self.build, self.x, self.y = name, build, x, y
    self.num_copies, self.lr = num_copies, lr


def cases(quick: bool) -> list[Case]:
  key = jax.random.key(0)
  digits = jax.random.uniform(key, (BATCH, 8, 8, 1))
  labels = jax.random.randint(key, (BATCH,), 0, 10)
  mlp = Case(
    "MLP 40-256-256-10",
    lambda n: MLP(num_copies=n),
    jax.random.normal(key, (BATCH, 40)),
    labels,
    10,
  )
  if quick:  # a smoke test of every section: one model, the cheapest to compile
    return [mlp]
  tokens = jax.random.randint(key, (BATCH, 70), 0, 50)
  return [
    Case("digits CNN (width 16)", lambda n: DigitsCNN(num_copies=n), digits, labels, 10),
    mlp,
    Case("CNN at 4x width (64)", lambda n: DigitsCNN(num_copies=n, width=64), digits, labels, 10),
    Case(
      "2-layer LSTM, PTB chars (BPTT 70)",
      lambda n: CharLSTM(num_copies=n),
      tokens,
      jnp.roll(tokens, -1, axis=1),
      6,
      (1e-3, 100.0),
    ),
  ]


def _plain_state(model: nn.Module, tx: optax.GradientTransformation, x: jax.Array) -> TrainState:
  variables = dict(model.init(jax.random.key(1), x, train=False))
  params = variables.pop("params")
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=variables,
    opt_state=tx.init(params),
    averaging_state=None,
    rng=jax.random.key(2),
  )


def plain_step(model: nn.Module, tx: optax.GradientTransformation) -> Callable:
  """The ordinary optax step: cross-entropy of a plain Dense output, one backward; the state
  is donated, as in the Alrao step."""

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state: TrainState, x: jax.Array, y: jax.Array):
    rng, dropout_key = jax.random.split(state.rng)
    mutable = list(state.model_state)

    def loss_fn(params):
      logits, model_state = model.apply(
        {"params": params, **state.model_state},
        x,
        train=True,
        rngs={"dropout": dropout_key},
        mutable=mutable,
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), model_state

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      model_state=model_state,
      opt_state=opt_state,
      rng=rng,
    ), {"loss": loss}

  return step


def _host_switch(log_weights: np.ndarray, t: int, ll: np.ndarray, theta: float = 0.9999):
  """The switch recursion in NumPy on the host, as in the authors' code."""
  n = ll.shape[0]
  logw = log_weights + (ll - ll.max())
  pi = 1.0 / (t + 1)
  pool = np.logaddexp.reduce(logw[0]) + np.log(pi) - np.log(n)
  logw = np.stack(
    [
      np.logaddexp(logw[0] + np.log1p(-pi), np.log(theta) + pool),
      np.logaddexp(logw[1], np.log1p(-theta) + pool),
    ]
  )
  logw -= np.logaddexp.reduce(logw.ravel())
  return logw, np.exp(np.logaddexp(logw[0], logw[1]))


class NaiveAlrao:
  """Alrao the authors' way, in JAX: a Python loop over copies, a gradient per copy, the
  copies run forward twice, and the switch updated on the host with the posterior pulled
  back every step."""

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation, state: TrainState):
    self.model, self.tx = model, tx
    self.params, self.model_state, self.opt_state = state.params, state.model_state, state.opt_state
    n = state.averaging_state.log_posterior.shape[0]
    self.logw = np.stack([np.full(n, np.log(0.9999 / n)), np.full(n, np.log(1e-4 / n))])
    self.posterior, self.t, self.rng = np.full(n, 1.0 / n), 1, state.rng
    self._mixture_grads = jax.jit(self._mixture_grads_fn)
    self._copy_grad = jax.jit(jax.value_and_grad(self._copy_loss))
    self._apply = jax.jit(self._apply_fn)

  def _forward(self, params, model_state, x, key):
    captured = {}

    def capture(next_fun, args, kwargs, context):
      if isinstance(context.module, AlraoHead) and context.method_name == "__call__":
        captured["z"] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
      _, new_state = self.model.apply(
        {"params": params, **model_state},
        x,
        train=True,
        rngs={"dropout": key},
        mutable=list(model_state),
      )
    z = captured["z"]
    copies = _get(params, _head_path(params))  # plain autodiff through all copies
    bias = copies["bias"].reshape(copies["bias"].shape[0], *(1,) * (z.ndim - 1), -1)
    return jnp.einsum("...d,ndk->n...k", z, copies["kernel"]) + bias, z, new_state

  def _mixture_grads_fn(self, params, model_state, x, y, posterior, key):
    def loss_fn(params):
      logits, z, new_state = self._forward(params, model_state, x, key)
      log_probs = jax.nn.log_softmax(logits)
      picked = jnp.take_along_axis(log_probs, y[None, ..., None], axis=-1)[..., 0]
      mixed = jax.nn.logsumexp(picked + jnp.log(posterior).reshape((-1,) + (1,) * y.ndim), 0)
      return -jnp.mean(mixed), (z, new_state)

    return jax.grad(loss_fn, has_aux=True)(params)

  @staticmethod
  def _copy_loss(copy, z, y):
    logits = z @ copy["kernel"] + copy["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def _apply_fn(self, params, grads, opt_state):
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step(self, x, y):
    self.rng, key = jax.random.split(self.rng)
    grads, (z, self.model_state) = self._mixture_grads(
      self.params, self.model_state, x, y, jnp.asarray(self.posterior), key
    )
    head = _head_path(self.params)
    copies = _get(self.params, head)
    kernels, biases, losses = [], [], []
    for j in range(len(self.posterior)):
      copy = {"kernel": copies["kernel"][j], "bias": copies["bias"][j]}
      loss, g = self._copy_grad(copy, z, y)
      kernels.append(g["kernel"])
      biases.append(g["bias"])
      losses.append(float(loss))  # host sync per copy, as loss.item() would
    grads = _set(grads, head, {"kernel": jnp.stack(kernels), "bias": jnp.stack(biases)})
    self.params, self.opt_state = self._apply(self.params, grads, self.opt_state)
    ll = -np.nan_to_num(np.asarray(losses), nan=np.inf)
    self.logw, self.posterior = _host_switch(self.logw, self.t, ll)
    self.t += 1
    return self.params


def _head_path(params) -> tuple[str, ...]:
  for path in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [k.key for k in path[0]]
    if "alrao_copies" in keys:
      return tuple(keys[: keys.index("alrao_copies") + 1])
  raise ValueError("no AlraoHead in params")


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  if not path:
    return value
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def time_rounds(
  variants: dict[str, Callable[[], object]], *, rounds: int, per_round: int, warmup: int = 3
) -> dict[str, list[float]]:
  """Per-round median seconds per step of each variant, timed round-robin to share machine
  noise (each step blocked with ``block_until_ready``)."""
  for run in variants.values():
    for _ in range(warmup):
      jax.block_until_ready(run())
  medians = {name: [] for name in variants}
  for _ in range(rounds):
    for name, run in variants.items():
      times = []
      for _ in range(per_round):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
      medians[name].append(statistics.median(times))
  return medians


def interleaved(
  variants: dict[str, Callable[[], object]], *, rounds: int, per_round: int, warmup: int = 3
) -> dict[str, float]:
  """Median over rounds of the per-round median seconds per step (see :func:`time_rounds`)."""
  found = time_rounds(variants, rounds=rounds, per_round=per_round, warmup=warmup)
  return {name: statistics.median(values) for name, values in found.items()}


def _stepper(step: Callable, state, x, y) -> Callable[[], object]:
  box = [state]

  def run():
    box[0], metrics = step(box[0], x, y)
    return metrics["loss"]

  return run


def _setups(case: Case):
  alrao_model, plain_model = case.build(case.num_copies), case.build(None)
  alrao_tx = alrao_jax.alrao_sgd(*case.lr, key=jax.random.key(3))
  plain_tx = optax.sgd(0.01)
  alrao_state = alrao_jax.create_train_state(
    alrao_model, alrao_tx, jax.random.key(1), case.x, train=False
  )
  return (alrao_model, alrao_tx, alrao_state), (
    plain_model,
    plain_tx,
    _plain_state(plain_model, plain_tx, case.x),
  )


def time_steps(
  case: Case, rounds: int, per_round: int, naive: bool
) -> tuple[dict[str, list[float]], float | None]:
  """Per-round median seconds per step of the Alrao, plain (and naive) steps, and the steps'
  FLOP limit (see :func:`flop_ratio`)."""
  (am, atx, ast), (pm, ptx, pst) = _setups(case)
  alrao, plain = (
    alrao_jax.make_train_step(am, atx, train_kwargs={"train": True}),
    plain_step(pm, ptx),
  )
  limit = flop_ratio(alrao, ast, plain, pst, case.x, case.y)  # before the steps donate the states
  naive_state = jax.tree.map(jnp.copy, ast)  # its own copy: the Alrao step donates ast
  variants = {
    "alrao": _stepper(alrao, ast, case.x, case.y),
    "plain": _stepper(plain, pst, case.x, case.y),
  }
  if naive:
    slow = NaiveAlrao(am, atx, naive_state)
    variants["naive"] = lambda: slow.step(case.x, case.y)
  return time_rounds(variants, rounds=rounds, per_round=per_round), limit


def _batched_flop_ratio(model, tx, state, plain, plain_state, x, y) -> float:
  """:func:`flop_ratio` of the same step with its head in the batched layout: a huge head's
  per-copy loop (``alrao_jax.head.PER_COPY_MIN_BYTES``) does the same arithmetic, but XLA
  counts a loop's body once."""
  threshold = alrao_jax.head.PER_COPY_MIN_BYTES
  alrao_jax.head.PER_COPY_MIN_BYTES = float("inf")
  try:
    return flop_ratio(alrao_jax.make_train_step(model, tx), state, plain, plain_state, x, y)
  finally:
    alrao_jax.head.PER_COPY_MIN_BYTES = threshold


def flop_ratio(alrao: Callable, alrao_state, plain: Callable, plain_state, x, y) -> float | None:
  """Alrao step FLOPs / plain step FLOPs, as XLA counts them in the compiled steps: the time
  ratio that the extra arithmetic of the copies alone predicts. ``None`` for a step with a
  loop (an LSTM's scan), whose body XLA counts once, not once per iteration."""
  compiled = [
    step.lower(state, x, y).compile()
    for step, state in ((alrao, alrao_state), (plain, plain_state))
  ]
  if any(_loops_over_matmuls(c.as_text()) for c in compiled):
    return None
  alrao_flops, plain_flops = (c.cost_analysis()["flops"] for c in compiled)
  return alrao_flops / plain_flops


def _computations(text: str) -> dict[str, str]:
  """HLO computation name -> its text."""
  found, name, lines = {}, None, []
  for line in text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      name, lines = header.group(1), []
    elif line.startswith("}") and name is not None:
      found[name], name = "\n".join(lines), None
    elif name is not None:
      lines.append(line)
  return found


def _loops_over_matmuls(text: str) -> bool:
  """Whether a while loop's body (or what it calls) holds a matmul or a convolution: then
  XLA's FLOP count holds one iteration of it (an RNG's loop holds none)."""
  computations = _computations(text)
  called = re.compile(r"(?:body|calls|to_apply|condition)=%?([\w.\-]+)")
  for line in text.splitlines():
    if " while(" not in line:
      continue
    todo, seen = [m for m in called.findall(line)], set()
    while todo:
      name = todo.pop()
      if name in seen or name not in computations:
        continue
      seen.add(name)
      if re.search(r" (dot|convolution)\(", computations[name]):
        return True
      todo += called.findall(computations[name])
  return False


def _over(ratio: float, limit: float | None) -> tuple[str, str]:
  """The FLOP limit and the ratio over it, as table cells."""
  if limit is None:
    return "n/a (loop)", "n/a"
  return f"{limit:.3f}", f"{ratio / limit:.3f}"


def compile_seconds(case: Case) -> dict[str, float]:
  (am, atx, ast), (pm, ptx, pst) = _setups(case)
  out = {}
  for name, step, state in (
    ("alrao", alrao_jax.make_train_step(am, atx, train_kwargs={"train": True}), ast),
    ("plain", plain_step(pm, ptx), pst),
  ):
    start = time.perf_counter()
    step.lower(state, case.x, case.y).compile()
    out[name] = time.perf_counter() - start
  return out


def nbytes(tree) -> int:
  return sum(
    int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
    if hasattr(x, "dtype")
  )


def memory_rows(case: Case) -> list[str]:
  alrao_params = case.build(case.num_copies).init(jax.random.key(0), case.x, train=False)["params"]
  plain_params = case.build(None).init(jax.random.key(0), case.x, train=False)["params"]
  key = jax.random.key(0)
  rows = []
  for name, alrao_tx, plain_tx in (
    ("SGD", alrao_jax.alrao_sgd(*case.lr, key=key), optax.sgd(0.1)),
    (
      "SGD + momentum",
      alrao_jax.alrao_sgd(*case.lr, key=key, momentum=0.9),
      optax.sgd(0.1, momentum=0.9),
    ),
    ("Adam", alrao_jax.alrao_adam(*case.lr, key=key), optax.adam(1e-3)),
  ):
    a, p = nbytes(alrao_tx.init(alrao_params)), nbytes(plain_tx.init(plain_params))
    ratio = f"{a / p:.2f}" if p else "n/a (optax keeps none)"
    rows.append(f"| {name} | {p:,} | {a:,} | {ratio} |")
  copies = alrao_params["AlraoHead_0"]["alrao_copies"]
  n, d, k = copies["kernel"].shape
  extra = nbytes(alrao_params) - nbytes(plain_params)
  paper = (n - 1) * k * d * 4
  rows.append(
    f"\nParameters: plain {nbytes(plain_params):,} B, Alrao with N={n} copies "
    f"{nbytes(alrao_params):,} B; extra {extra:,} B against the paper's "
    f"(N-1) x K x d = {paper:,} B (plus (N-1) x K biases = {(n - 1) * k * 4:,} B)."
  )
  return rows


def scaling(quick: bool, rounds: int, per_round: int) -> list[str]:
  copies = (1, 10) if quick else (1, 2, 5, 10, 20, 50)
  outputs = (1000,) if quick else (10, 1000, 10000)
  x = jax.random.normal(jax.random.key(0), (BATCH, 40))
  rows = [
    "Each cell: Alrao step / plain step, then in parentheses that ratio over its FLOP limit "
    "(1.00 = as fast as the extra arithmetic allows).\n",
    "| K \\ N | plain (ms) | " + " | ".join(f"N={n}" for n in copies) + " |",
    "|---" * (len(copies) + 2) + "|",
  ]
  for k in outputs:
    y = jax.random.randint(jax.random.key(1), (BATCH,), 0, k)
    variants, limits = {}, {}
    plain_model = MLP(num_classes=k, num_copies=None)
    ptx = optax.sgd(0.01)
    plain, plain_state = plain_step(plain_model, ptx), _plain_state(plain_model, ptx, x)
    variants["plain"] = _stepper(plain, plain_state, x, y)
    for n in copies:
      model = MLP(num_classes=k, num_copies=n)
      tx = alrao_jax.alrao_sgd(LR_MIN, LR_MAX, key=jax.random.key(3))
      state = alrao_jax.create_train_state(model, tx, jax.random.key(1), x)
      step = alrao_jax.make_train_step(model, tx)
      limits[n] = flop_ratio(step, state, plain, plain_state, x, y) or _batched_flop_ratio(
        model, tx, state, plain, plain_state, x, y
      )
      variants[n] = _stepper(step, state, x, y)
    med = interleaved(variants, rounds=rounds, per_round=per_round)
    rows.append(
      f"| {k} | {1e3 * med['plain']:.2f} | "
      + " | ".join(
        f"{med[n] / med['plain']:.2f} ({med[n] / med['plain'] / limits[n]:.2f})" for n in copies
      )
      + " |"
    )
  rows.append(
    f"\nHeads of {alrao_jax.head.PER_COPY_MIN_BYTES / 2**20:.0f} MiB or more (here K = 10,000 with "
    "N = 50) run the backward's dz one matmul per copy on CPU (`lax.map`); every other cell "
    "runs the copies as one batched matmul. The FLOP limit counts the batched layout's "
    "arithmetic, the same."
  )
  return rows


def _fusions(step: Callable, state, x, y) -> int:
  """Number of fused kernels XLA runs for one step."""
  text = step.lower(state, x, y).compile().as_text()
  return text[text.index("ENTRY") :].count(" fusion(")


def breakdown(case: Case, rounds: int, per_round: int) -> list[str]:
  """Where the Alrao step's extra time goes: each variant adds one part of Alrao."""
  (am, atx, ast), (pm, ptx, pst) = _setups(case)
  one = case.build(1)
  noop = alrao_jax.ModelAveraging(
    init=alrao_jax.bayes_init, update=lambda state, ll: state, posterior=alrao_jax.bayes_posterior
  )
  rates_tx = alrao_jax.alrao_sgd(*case.lr, key=jax.random.key(3))
  copy = functools.partial(jax.tree.map, jnp.copy)
  steps = {
    "plain optax.sgd": (plain_step(pm, ptx), pst),
    "+ per-feature rates (alrao_sgd on the plain model)": (
      plain_step(pm, rates_tx),
      _plain_state(pm, rates_tx, case.x),
    ),
    "+ head of 1 copy and the Alrao loss, no switch": (
      alrao_jax.make_train_step(one, atx, averaging=noop, train_kwargs={"train": True}),
      alrao_jax.create_train_state(
        one, atx, jax.random.key(1), case.x, averaging=noop, train=False
      ),
    ),
    f"+ {case.num_copies} copies, no switch": (
      alrao_jax.make_train_step(am, atx, averaging=noop, train_kwargs={"train": True}),
      alrao_jax.create_train_state(am, atx, jax.random.key(1), case.x, averaging=noop, train=False),
    ),
    "+ the switch: the full Alrao step": (
      alrao_jax.make_train_step(am, atx, train_kwargs={"train": True}),
      ast,
    ),
  }
  kernels = {name: _fusions(step, state, case.x, case.y) for name, (step, state) in steps.items()}
  med = interleaved(
    {name: _stepper(step, copy(state), case.x, case.y) for name, (step, state) in steps.items()},
    rounds=rounds,
    per_round=per_round,
  )
  base = med["plain optax.sgd"]
  rows = [f"| variant ({case.name}) | ms | / plain | fused XLA kernels |", "|---|---|---|---|"]
  rows += [
    f"| {name} | {1e3 * med[name]:.3f} | {med[name] / base:.3f} | {kernels[name]} |"
    for name in steps
  ]
  return rows


def evaluation_memory(rows: int, chunk: int, streams: int = 20) -> list[str]:
  """Peak memory of evaluating a PTB-sized test split (the 2-layer LSTM, 6 copies, windows of
  70 characters) at once, in chunks of independent windows, and as ``fit`` runs the bundled
  task: carried streams, ``chunk // streams`` windows of every stream scanned in one call;
  from XLA's account of the compiled evaluation."""
  tokens = jnp.zeros((rows, 70), jnp.int32)
  tx = alrao_jax.alrao_sgd(1e-3, 100.0, key=jax.random.key(3))
  model, carried = CharLSTM(num_copies=6), CharLSTM(num_copies=6, carry=True)
  state = alrao_jax.create_train_state(model, tx, jax.random.key(1), tokens[:2], train=False)
  stream_state = alrao_jax.create_train_state(
    carried, tx, jax.random.key(1), tokens[:streams], train=False
  )
  windows = chunk // streams
  evaluate = alrao_jax.make_eval_step(model, eval_kwargs={"train": False})
  calls = (
    (f"{rows:,} windows (the whole split)", evaluate, state, tokens),
    (f"{chunk:,} windows", evaluate, state, tokens[:chunk]),
    (
      f"{windows} windows x {streams} carried streams ({windows * streams:,} rows, scanned)",
      alrao_jax.make_eval_step(carried, eval_kwargs={"train": False}, carry=("carry",)),
      stream_state,
      tokens[: windows * streams].reshape(windows, streams, 70),
    ),
  )
  out = [
    "| evaluated at once | arguments (MB) | temporaries (MB) | peak (MB) |",
    "|---|---|---|---|",
  ]
  for label, evaluate, at, inputs in calls:
    memory = evaluate.lower(at, inputs, inputs).compile().memory_analysis()
    peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    out.append(
      f"| {label} | {memory.argument_size_in_bytes / 1e6:.1f} | "
      f"{memory.temp_size_in_bytes / 1e6:.1f} | {peak / 1e6:.1f} |"
    )
  return out


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="CI smoke run: few steps and sizes")
  parser.add_argument("--out", default=DEFAULT_OUT, help=f"(default: {DEFAULT_OUT})")
  args = parser.parse_args(argv)
  rounds, per_round = (2, 3) if args.quick else (10, 5)
  command = command_line("speed.py", parser, args)
  lines = [
    f"# Alrao step speed and memory\n\nCommand: `{command}`  \nMachine: {machine()}  \n"
    f"Date: {datetime.date.today()}; batch {BATCH}; median of {rounds * per_round} "
    "timed steps per variant, variants interleaved.\n",
    "## (a, b) Step time: Alrao-SGD / plain optax.sgd, and naive Alrao / Alrao\n",
    f"Ratios: median over the {rounds} rounds of each round's median, [min - max] of the "
    "rounds. FLOP limit: Alrao step FLOPs / plain step FLOPs (XLA's count of the compiled "
    "steps), the ratio the copies' extra arithmetic alone predicts.\n",
    "| model | copies | plain (ms) | Alrao (ms) | Alrao / plain | FLOP limit | "
    "Alrao / plain / FLOP limit | naive (ms) | naive / Alrao |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  all_cases = cases(args.quick)
  for case in all_cases:
    found, limit = time_steps(case, rounds, per_round, naive=True)
    med = {name: statistics.median(values) for name, values in found.items()}
    ratios = [a / p for a, p in zip(found["alrao"], found["plain"], strict=True)]
    ratio = statistics.median(ratios)
    lines.append(
      f"| {case.name} | {case.num_copies} | {1e3 * med['plain']:.2f} | "
      f"{1e3 * med['alrao']:.2f} | {ratio:.3f} [{min(ratios):.3f} - {max(ratios):.3f}] | "
      f"{' | '.join(_over(ratio, limit))} | "
      f"{1e3 * med['naive']:.2f} | {med['naive'] / med['alrao']:.1f}x |"
    )
    print(lines[-1], flush=True)
  lines += ["\n## (a') Where the extra time goes\n"]
  for case in all_cases[:2]:
    lines += [*breakdown(case, rounds, per_round), ""]
    print("\n".join(lines[-8:]), flush=True)
  lines += [
    "\n## (c) Compile time of the jitted step\n",
    "| model | plain (s) | Alrao (s) | Alrao / plain |",
    "|---|---|---|---|",
  ]
  for case in all_cases:
    sec = compile_seconds(case)
    lines.append(
      f"| {case.name} | {sec['plain']:.2f} | {sec['alrao']:.2f} | "
      f"{sec['alrao'] / sec['plain']:.2f} |"
    )
    print(lines[-1], flush=True)
  lines += [
    f"\n## (d) Optimizer-state bytes ({all_cases[0].name}, N={all_cases[0].num_copies})\n",
    "| optimizer | optax (B) | Alrao (B) | Alrao / optax |",
    "|---|---|---|---|",
  ]
  lines += memory_rows(all_cases[0])
  lines += ["\n## (e) Scaling: MLP 40-256-256-K, Alrao step / plain step with the same K\n"]
  lines += scaling(args.quick, rounds, per_round)
  rows, chunk = (640, 64) if args.quick else (6320, 1024)
  lines += [
    "\n## (f) Evaluation memory: a PTB-sized test split, whole or in chunks\n",
    f"`alrao_jax.fit` evaluates {chunk:,} examples at a time by default (`eval_batch_size`); "
    f"the PTB test split has {rows:,} windows of 70 characters. The bundled `ptb-char` task "
    "carries the LSTM state from window to window (`fit(carry=...)`): its evaluation scans "
    "whole windows of the 20 streams in order, as many as fit in a chunk.\n",
    *evaluation_memory(rows, chunk),
  ]
  report = "\n".join(lines) + "\n"
  print("\n".join(lines[-12:]))
  write_results(report, args.out, quick=args.quick)
  return report


if __name__ == "__main__":
  main()
