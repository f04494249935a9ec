"""The README's quickstart runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(capsys):
  text = README.read_text()
  section = text[text.index("## Quickstart") :]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len(code.strip().splitlines()) <= 20
  exec(compile(code, "README quickstart", "exec"), {})
  out = capsys.readouterr().out
  accuracy = float(re.search(r"train accuracy: ([0-9.]+)", out).group(1))
  assert accuracy > 0.5  # 256 random points, 10 classes: the network must fit them
