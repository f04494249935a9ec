"""The README's code runs as written, and its demo table is what the demo prints."""

import math
import pathlib
import re
import subprocess
import sys

import pytest

from alrao_jax.experiments import demo

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks(title, until="\n## "):
  text = README.read_text()
  start = text.index(title)
  section = text[start : text.index(until, start + len(title))]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_quickstart_runs(capsys):
  code = _blocks("## Quickstart")[0]
  assert len(code.strip().splitlines()) <= 20
  exec(compile(code, "README quickstart", "exec"), {})
  out = capsys.readouterr().out
  accuracy = float(re.search(r"train accuracy: ([0-9.]+)", out).group(1))
  assert accuracy > 0.5  # 256 random points, 10 classes: the network must fit them


@pytest.mark.parametrize("title", ["### Flax linen", "### Flax NNX"])
def test_your_own_model_loops_run(title, capsys):
  code = "\n".join(_blocks(title, until="\n### "))
  exec(compile(code, f"README {title}", "exec"), {})
  out = capsys.readouterr().out
  for split in ("valid", "test"):
    accuracy = float(re.search(rf"{split} accuracy: ([0-9.]+)", out).group(1))
    assert accuracy > 0.8, out  # three classes; a linear rule of two inputs
  if "linen" in title:
    assert float(re.search(r"fit: best epoch \d+ test accuracy ([0-9.]+)", out).group(1)) > 0.8


def test_your_own_step_recipe_runs_in_linen_and_nnx(capsys):
  code = "\n".join(_blocks("### Your own jitted step"))
  exec(compile(code, "README own step", "exec"), {})
  out = capsys.readouterr().out
  assert float(re.search(r"linen own step: loss [0-9.]+, accuracy ([0-9.]+)", out).group(1)) > 0.8
  assert float(re.search(r"nnx own step: accuracy ([0-9.]+)", out).group(1)) > 0.8
  assert "rates of Dense_0's units: (1, 32)" in out


def _table(text):
  rows = re.findall(
    r"^\| (Alrao-SGD.*?|SGD lr.*?|Adam lr.*?) \| ([0-9.]+) ± ([0-9.]+) \| "
    r"([0-9.]+)% ± ([0-9.]+) \|",
    text,
    re.M,
  )
  return {name: tuple(float(v) for v in values) for name, *values in rows}


def test_the_readme_quotes_what_the_demo_prints_and_its_claims_follow(capsys):
  """The demo's numbers move with the processor's float rounding (one Alrao run over 30
  epochs is chaotic); what the README claims must hold on any CPU, within the spread."""
  quoted = _table(README.read_text())
  assert len(quoted) == 3
  alrao, sgd, adam = demo.main([])
  printed = _table(capsys.readouterr().out)
  assert quoted.keys() == printed.keys()
  for name, (loss, loss_sd, accuracy, accuracy_sd) in printed.items():
    want_loss, want_loss_sd, want_accuracy, want_accuracy_sd = quoted[name]
    # A processor moves the mean of three seeds by much less than one seed's spread.
    assert abs(loss - want_loss) <= max(loss_sd, want_loss_sd), (name, loss, want_loss)
    assert abs(accuracy - want_accuracy) <= max(accuracy_sd, want_accuracy_sd), name
  # The README's sentences: Alrao's accuracy within one point of SGD at lr 0.1 and of Adam;
  # its mean test loss above SGD's; on every seed the switch leads with a copy within one
  # step of the grid (0.67 decades) from SGD's best rate on digits, 0.1.
  section = README.read_text().split("## The main demo")[1].split("\n## ")[0]
  assert "within one point" in section and "higher than SGD's" in section
  for peer in (sgd, adam):
    assert alrao["accuracy_mean"] > peer["accuracy_mean"] - 0.01
  assert alrao["loss_mean"] > sgd["loss_mean"]
  assert all(0.02 <= lr <= 0.5 for lr in alrao["leading_lrs"]), alrao["leading_lrs"]


def test_several_devices_code_runs_on_eight_simulated_devices(tmp_path):
  code = _blocks("## Several devices and hosts")[0]
  assert 'jax.config.update("jax_num_cpu_devices", 8)' in code
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
  )
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  assert "head kernel: P('copies', None, None)" in out
  for name in ("linen loss", "fit test loss", "nnx loss"):
    loss = float(re.search(rf"{name}: ([0-9.]+)", out).group(1))
    assert loss < 1.0, out  # log 4 = 1.39 at chance


def test_after_the_run_code_runs_and_the_text_quotes_what_it_prints(capsys):
  code = _blocks("## After the run")[0]
  exec(compile(code, "README after the run", "exec"), {})
  out = capsys.readouterr().out
  lr = float(re.search(r"suggested lr ([0-9.e-]+);", out).group(1))
  alrao, sgd = (float(v) for v in re.search(r"Alrao ([0-9.]+), SGD ([0-9.]+)", out).groups())
  section = README.read_text().split("## After the run")[1].split("\n## ")[0]
  quoted_lr = float(re.search(r"suggested lr ([0-9.e-]+);", section).group(1))
  quoted = re.search(r"test accuracy: Alrao ([0-9.]+), SGD ([0-9.]+)", section).groups()
  # Ten epochs on a toy: another processor's rounding may move the digits, not the story.
  assert abs(math.log10(lr / quoted_lr)) <= 0.35, (lr, quoted_lr)  # the same copy or the next
  assert abs(alrao - float(quoted[0])) <= 0.05 and abs(sgd - float(quoted[1])) <= 0.15
  # What the text says of it: the suggestion is poor, SGD there far below Alrao itself.
  assert "the suggestion is poor" in section and alrao > sgd + 0.2
