"""The README's code runs as written, and its demo table is what the demo prints."""

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
  code = "\n".join(_blocks(title, until="\n### " if "linen" in title else "\n## "))
  exec(compile(code, f"README {title}", "exec"), {})
  out = capsys.readouterr().out
  for split in ("valid", "test"):
    accuracy = float(re.search(rf"{split} accuracy: ([0-9.]+)", out).group(1))
    assert accuracy > 0.8, out  # three classes; a linear rule of two inputs
  if "linen" in title:
    assert float(re.search(r"fit: best epoch \d+ test accuracy ([0-9.]+)", out).group(1)) > 0.8


def _table(text):
  rows = re.findall(
    r"^\| (Alrao-SGD.*?|SGD lr.*?|Adam lr.*?) \| (.*?) \| (.*?)% \| (\d+) \|", text, re.M
  )
  posterior = (
    re.search(r"copies at the kept epoch \(lr from 1e-5 to 10\): ([0-9. ]+)", text).group(1).split()
  )
  return {name: (float(loss), float(acc), int(epoch)) for name, loss, acc, epoch in rows}, [
    float(p) for p in posterior
  ]


def test_the_readme_quotes_what_the_demo_prints(capsys):
  quoted, quoted_posterior = _table(README.read_text())
  assert len(quoted) == 3
  rows = demo.main([])
  printed, posterior = _table(capsys.readouterr().out)
  assert rows[0]["method"].startswith("Alrao-SGD") and rows[0]["test_accuracy"] > 0.9
  assert abs(sum(rows[0]["posterior"]) - 1) < 1e-4
  assert quoted.keys() == printed.keys()
  for name, (loss, accuracy, epoch) in printed.items():
    want_loss, want_accuracy, want_epoch = quoted[name]
    # Another CPU may round differently along 30 epochs: small drifts pass, stale numbers not.
    assert abs(loss - want_loss) <= 0.008, (name, loss, want_loss)
    assert abs(accuracy - want_accuracy) < 1.0, (name, accuracy, want_accuracy)
    assert abs(epoch - want_epoch) <= 5, (name, epoch, want_epoch)
  assert max(abs(a - b) for a, b in zip(posterior, quoted_posterior, strict=True)) <= 0.15


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
  assert 1e-5 <= lr <= 10 and alrao > 0.8 and sgd > 0.3
  section = README.read_text().split("## After the run")[1].split("\n## ")[0]
  assert f"suggested lr {lr:.3g}" in section  # the text quotes the run it shows
  assert f"Alrao {alrao:.3f}, SGD {sgd:.3f}" in section
