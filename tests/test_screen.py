"""Screening: Alrao's ranking of built-in digits variants, checked against tuned SGD."""

import json

import pytest

from alrao_jax.experiments import cli
from alrao_jax.experiments.tasks import BUILTIN_CONFIGS, load_configs, model_builder
from alrao_jax.screen import kendall_tau


def test_screen_verify_ranks_the_builtin_variants_in_the_right_order(tmp_path, capsys):
  args = ["screen", "--task", "digits", "--epochs", "3", "--verify", "--grid", "1"]
  assert cli.main([*args, "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out.splitlines()
  ranked = [line.split(" | ")[1] for line in out[1:4]]
  widths = sorted(BUILTIN_CONFIGS, key=lambda n: -BUILTIN_CONFIGS[n]["width"])
  assert ranked == widths  # the widest first, as capacity says
  assert "Kendall tau between the rankings: 1.000" in out[-2]
  assert "Alrao ranking: 3 runs" in out[-3] and "tuned SGD ranking: 3 runs" in out[-2]
  summary = json.loads(out[-1])  # the last line is JSON, as written to --out
  assert [row["name"] for row in summary["rows"]] == widths and summary["kendall_tau"] == 1.0
  assert summary == json.loads((tmp_path / "screen.json").read_text())


def test_kendall_tau_counts_concordant_pairs():
  assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
  with pytest.raises(ValueError, match="same length"):
    kendall_tau([1, 2], [1])


def test_configuration_files(tmp_path):
  (tmp_path / "a.json").write_text(json.dumps(BUILTIN_CONFIGS))
  assert load_configs(tmp_path / "a.json") == BUILTIN_CONFIGS
  (tmp_path / "b.toml").write_text('[small]\nmodel = "mlp"\nwidth = 4\n[big]\nmodel = "cnn"\n')
  assert load_configs(tmp_path / "b.toml")["big"] == {"model": "cnn"}
  (tmp_path / "c.json").write_text("{")
  with pytest.raises(ValueError, match="not valid json"):
    load_configs(tmp_path / "c.json")
  (tmp_path / "d.json").write_text(json.dumps({"only": {"model": "mlp"}}))
  with pytest.raises(ValueError, match="at least two"):
    load_configs(tmp_path / "d.json")
  with pytest.raises(ValueError, match="'model' must be one of"):
    model_builder({"model": "resnet"})
  with pytest.raises(ValueError, match="unexpected keyword"):
    model_builder({"model": "mlp", "heads": 3})


def test_bad_screen_input_is_one_line_exit_2(tmp_path, capsys):
  (tmp_path / "bad.json").write_text(json.dumps({"a": {"model": "mlp"}, "b": {"model": "x"}}))
  out = ["--out", str(tmp_path / "screen")]
  assert cli.main(["screen", "--configs", str(tmp_path / "bad.json"), *out]) == 2
  assert cli.main(["screen", "--grid", "0.1,fast", "--verify", *out]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "'model' must be one of" in err[0] and "--grid" in err[1]
