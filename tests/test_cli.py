"""The alrao-jax command: exact resume, lr-find, and one-line errors with exit code 2."""

import json
import pickle
import subprocess
import sys

import chex
import jax
import pytest

import alrao_jax
from alrao_jax import cli
from alrao_jax.checkpoint import restore_checkpoint
from alrao_jax.data import load_digits
from alrao_jax.models import DigitsCNN

TRAIN = ["train", "--no-progress", "--copies", "4", "--seed", "1"]


def _restored(folder):
  like = alrao_jax.create_train_state(
    DigitsCNN(num_copies=4),
    alrao_jax.alrao_sgd(1e-5, 10.0, key=jax.random.key(2)),
    jax.random.key(1),
    load_digits().train.inputs[:32],
    train=False,
  )
  return restore_checkpoint(folder / "checkpoint", like)


def test_train_then_resume_equals_one_uninterrupted_run(tmp_path, capsys):
  assert cli.main([*TRAIN, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
  assert cli.main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
  assert cli.main([*TRAIN, "--epochs", "3", "--out", str(tmp_path / "split"), "--resume"]) == 0
  whole, split = _restored(tmp_path / "whole"), _restored(tmp_path / "split")
  assert whole.epoch == split.epoch == 3
  chex.assert_trees_all_equal(split.state.params, whole.state.params)
  chex.assert_trees_all_equal(split.state.opt_state, whole.state.opt_state)
  chex.assert_trees_all_equal(split.state.averaging_state, whole.state.averaging_state)
  lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
  assert lines == (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 3 and len(json.loads(lines[0])["posterior"]) == 4
  for name in ("curves.png", "posterior.png"):
    assert (tmp_path / "split" / name).read_bytes()[:4] == b"\x89PNG"
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["test_accuracy"] > 0.5


def test_lr_find_command_prints_suggestions_and_saves_the_plot(tmp_path, capsys):
  args = [
    "lr-find",
    "--steps",
    "40",
    "--start-lr",
    "1e-4",
    "--end-lr",
    "100",
    "--out",
    str(tmp_path),
  ]
  assert cli.main(args) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(out["suggestions"]) == {"steep", "valley", "minimum"}
  assert 1e-4 <= out["suggestions"]["steep"] <= 100
  assert (tmp_path / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def _run(args, tmp_path):
  return subprocess.run(
    [sys.executable, "-m", "alrao_jax.cli", *args],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )


def _bad_cifar(tmp_path):
  folder = tmp_path / "cifar"
  folder.mkdir()
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    (folder / name).write_bytes(pickle.dumps({b"data": [1, 2, 3]}))
  return str(folder)


def _corrupt_run(tmp_path):
  assert cli.main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
  (tmp_path / "run" / "checkpoint" / "meta.json").write_text("{")
  return str(tmp_path / "run")


@pytest.mark.parametrize(
  ("make_args", "message"),
  [
    (lambda p: ["train", "--task", "imagenet"], "invalid choice: 'imagenet'"),
    (lambda p: ["train", "--optimizer", "lion"], "invalid choice: 'lion'"),
    (lambda p: ["train", "--task", "cifar10", "--data", str(p / "nowhere")], "lacks CIFAR-10"),
    (lambda p: ["train", "--task", "cifar10"], "needs --data"),
    (lambda p: ["train", "--task", "cifar10", "--data", _bad_cifar(p)], "not a CIFAR-10"),
    (lambda p: ["train", "--task", "ptb-char", "--data", str(p)], "ptb.char.valid.txt"),
    (lambda p: ["train", "--lr-min", "1", "--lr-max", "0.1"], "--lr-min (1.0) must be <="),
    (lambda p: ["train", "--optimizer", "sgd", "--copies", "3"], "apply to alrao-* optimizers"),
    (lambda p: ["train", "--epochs", "2", "--resume", "--out", _corrupt_run(p)], "corrupt"),
    (lambda p: ["train", "--resume", "--copies", "6", "--out", str(p / "run")], "no checkpoint"),
  ],
)
def test_bad_input_gives_one_line_and_exit_code_2(make_args, message, tmp_path):
  result = _run(make_args(tmp_path), tmp_path)
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], result.stderr
  assert "Traceback" not in result.stderr


def test_a_checkpoint_of_another_model_is_refused(tmp_path, capsys):
  assert cli.main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
  args = [
    "train",
    "--no-progress",
    "--copies",
    "6",
    "--epochs",
    "2",
    "--resume",
    "--out",
    str(tmp_path / "run"),
  ]
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "does not fit this model" in err[0]
