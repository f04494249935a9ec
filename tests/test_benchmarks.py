"""The speed benchmark's --quick mode runs end to end (no timing thresholds: CI is noisy)."""

import argparse
import json
import pathlib
import re
import sys

import numpy as np
import pytest

from alrao_jax import strict_json as alrao_strict_json

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_speed_quick_mode_reports_every_section(monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  sys.modules.pop("speed", None)
  import speed

  report = speed.main(["--quick"])
  for section in (
    "(a, b) Step time",
    "(c) Compile time",
    "(d) Optimizer-state bytes",
    "(e) Scaling",
    "(f) Evaluation memory",
  ):
    assert section in report
  peaks = [float(p) for p in re.findall(r"windows.*\| [\d.]+ \| [\d.]+ \| ([\d.]+) \|", report)]
  assert len(peaks) == 3 and peaks[1] < peaks[0] / 5  # 64 windows against 640
  assert peaks[2] < peaks[1]  # carried streams: one window alive at a time
  rows = re.findall(
    r"\| (\d+\.\d+) \[[\d.]+ - [\d.]+\] \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| [\d.]+x \|", report
  )
  assert len(rows) == 1  # quick mode: the MLP
  for ratio, limit, over in ((float(v) for v in row) for row in rows):
    assert ratio > 0 and limit > 1  # the copies add arithmetic
    # All three are printed to 3 decimals (each off by up to 5e-4): how far over can be from
    # ratio / limit follows from that rounding, whatever the processor measured.
    half = 5e-4
    assert abs(over - ratio / limit) <= half + half / limit + half * ratio / limit**2 + 1e-9
  extra = re.search(r"extra ([\d,]+) B against the paper's \(N-1\) x K x d = ([\d,]+) B", report)
  measured, paper = (int(g.replace(",", "")) for g in extra.groups())
  assert measured == paper + 9 * 10 * 4  # the paper's count plus the copies' biases


def test_nnx_step_benchmark_quick_mode_reports_three_variants(monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  sys.modules.pop("nnx_step", None)
  import nnx_step

  report = nnx_step.main(["--quick"])
  rows = re.findall(
    r"^\| (Alrao NNX|Alrao linen|plain NNX \(cached_partial\)) \| ([\d.]+) ", report, re.M
  )
  assert [name for name, _ in rows] == ["Alrao NNX", "Alrao linen", "plain NNX (cached_partial)"]
  assert all(float(ms) > 0 for _, ms in rows)
  model = re.search(r"^\| MLP 40-256-256-10 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \[", report, re.M)
  plain, alrao, ratio = (float(v) for v in model.groups())
  assert plain > 0 and alrao > 0 and ratio > 0


def _import(monkeypatch, name):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  sys.modules.pop(name, None)
  return __import__(name)


def test_tune_report_divides_by_the_grid_best_chosen_on_validation(monkeypatch):
  tune = _import(monkeypatch, "tune")

  def grid(best_loss):
    return {
      "best_lr": 0.1,
      "best_loss": best_loss,
      "seconds": 21.0,
      "test_loss": {"0.1": [0], "1": [0]},
    }

  results = {
    "digits": {
      "epochs": 4,
      "seeds": 2,
      "loss_scale": 1.0,
      "loss_unit": "nats",
      "grid": grid([0.02, 0.04]),
      "grid_cosine": {**grid([0.01, 0.03]), "best_lr": 1.0},
      "sgd_run_seconds": 10.5,
      "sweeps": [  # per seed: the decade sweep's pick (tuned SGD's losses) and the quarter's
        {
          "decade": {"pick_lr": 0.1, "pick_loss": 0.02, "seconds": 21.0},
          "quarter": {"pick_lr": 0.178, "pick_loss": 0.01, "seconds": 30.0},
        },
        {
          "decade": {"pick_lr": 0.1, "pick_loss": 0.04, "seconds": 21.0},
          "quarter": {"pick_lr": 0.1, "pick_loss": 0.04, "seconds": 30.0},
        },
      ],
      "tune": [
        {
          "lr": 1.0,
          "kept_lr": 1.0,
          "leading_lr": 1.0,
          "alrao_loss": 0.06,
          "alrao_seconds": 5,
          "sgd_loss": 0.03,
          "sgd_seconds": 3,
          "confidence": "high",
          "body_knee": 0.178,
          "alrao_epochs": 20,
          "tune_lr": 0.1,
          "race_best": 0.1,
          "race_seconds": 2,
          "race_rates": 6,
          "race_epochs": 2,
          "tune_sgd_loss": 0.02,
        },
        {
          "lr": 0.01,
          "kept_lr": 0.01,
          "leading_lr": 0.01,
          "alrao_loss": 0.06,
          "alrao_seconds": 5,
          "sgd_loss": 0.03,
          "sgd_seconds": 3,
          "confidence": "low",
          "reasons": ["the leading copy barely moved from its start"],
          "body_knee": 5.62,
          "alrao_epochs": 20,
          "tune_lr": 0.1,
          "race_best": 0.316,
          "race_seconds": 2,
          "race_rates": 6,
          "race_epochs": 2,
          "tune_sgd_loss": 0.048,
        },
      ],
      "lr_find": [
        {
          "seconds": 1,
          "valley_lr": 0.1,
          "valley_loss": 0.03,
          "valley_seconds": 3,
          "minimum_lr": 0.1,
          "minimum_loss": 0.09,
          "minimum_seconds": 3,
        }
      ]
      * 2,
      "refocus": [{"lr": 0.1, "loss": 0.045, "seconds": 6}] * 2,
      "cosine": [{"loss": 0.04, "seconds": 5}] * 2,
    }
  }
  lines = tune.report(results, ["# header"])
  trust, suggestions = (
    next(line for line in lines[lines.index(h) :] if line.startswith("| digits | 0.1 |"))
    for h in (
      tune.trust_table(results)[0],
      "## Alrao suggests the learning rate: one Alrao run, then SGD at its suggestion",
    )
  )
  cells = [c.strip() for c in trust.strip("|").split("|")]
  # per seed, over tuned SGD of the same seed (0.02, 0.04): tune's pick 0.02 / 0.02 and
  # 0.048 / 0.04; suggest_lr and the valley 0.03 / 0.02 and 0.03 / 0.04. Compute in SGD runs of
  # the grid's 21 s / 2 rates: the race 5 + 2 s, suggest_lr 5 s, the range test 1 s.
  assert cells[2:5] == ["+0.00", "1.100, 1.200", "7, 0.7"]
  # racing only below "high": seed 0 ("high") at its suggestion 1.0 (0.03 / 0.02, no race: 5 s),
  # seed 1 ("low") at tune's pick 0.1 (0.048 / 0.04, 5 + 2 s)
  assert cells[5:8] == ["+0.50", "1.350, 1.500", "6, 0.6"]
  assert cells[8:11] == ["+0.00", "1.125, 1.500", "5, 0.5"]
  assert cells[11:14] == ["+0.00", "1.125, 1.500", "1, 0.1"]
  cells = [c.strip() for c in suggestions.strip("|").split("|")]
  # decades +1 and -1 average to 0; 0.03 / mean(0.02, 0.04) = 1; 0.09 / 0.03 = 3
  assert cells[2] == "+0.00" and cells[3] == "1.000" and cells[4] == "2, 8"
  assert cells[6] == "1.000" and cells[8] == "3.000"
  assert cells[10] == "2.000" and cells[11] == "1.500"
  schedule_row = next(line for line in lines if line.startswith("| digits | 0.0300 |"))
  assert schedule_row.rstrip().endswith("| 2.000 |")  # Alrao + cosine 0.04 / tuned + cosine 0.02
  text = "\n".join(lines)
  assert "within 1.05 of tuned SGD on 1 of 1 tasks (digits)" in text
  assert "The best of the three suggestions is Alrao's suggestion on digits." in text
  assert "refocused run beats one plain Alrao run on digits" in text  # 1.5 against 2.0
  assert "tune (Alrao + race) meets its three goals" in text and "on 0 of 1 tasks" in text
  # against each seed's own sweep: tune 0.02 / 0.02 and 0.048 / 0.04; against the quarter-decade
  # picks 0.02 / 0.01 and 0.048 / 0.04; its compute 7 s of the sweep's 21 s
  yardstick = next(line for line in lines if line.startswith("| digits | 0.1, 0.1 |"))
  cells = [c.strip() for c in yardstick.strip("|").split("|")]
  assert cells[2] == "21, 2.0" and cells[3:6] == ["1.100, 1.200", "1.600, 2.000", "7, 0.7, 33%"]
  assert "| digits | 0 | 0.1 | 0.0200 | 21 | 0.178 | 0.0100 | 30 |" in text
  assert "Against each seed's own sweep pick, tune (Alrao + race) meets the three goals" in text
  # per seed: the suggestion, the race (rates x epochs), its best and tune's pick
  seed_1 = "| digits | 1 | 20 | 0.01 | low | 5.62 | 0.750 | 6 x 2 | 0.316 | 0.1 | 1.200 | 0.1 |"
  assert f"{seed_1} 0.750 |" in text  # 20 epochs of Alrao; 5.62: the body's knee
  assert "![schedules](tune_schedules.png)" in text
  # the confidence against the seeds' picks: seed 0's "high" 1.0 is a decade above its decade
  # pick 0.1 (0.75 above the quarter pick 0.178), SGD there 0.03 / 0.02; seed 1's "low" 0.01
  assert "| high | 1 | 0 | 0 | 1.50, 1.50 | digits 0 (+1.00; 0.178) |" in text
  assert "| low | 1 | 0 | 0 | 0.75, 0.75 | digits 1 (-1.00; 5.62) |" in text
  assert "the goal is **missed**" in text and "the leading copy did not learn (1)" in text
  # a second processor's run (--name tune_amd) shows its own figure
  assert "![schedules](tune_amd_schedules.png)" in tune.report(results, ["# h"], "tune_amd")
  assert tune.results_name("tune_amd") == "tune_amd"
  with pytest.raises(argparse.ArgumentTypeError, match="a file name"):
    tune.results_name("../tune")  # a name, not a path: the results stay beside the others


def test_layer_schedule_report_counts_epochs_to_the_target(monkeypatch):
  layers = _import(monkeypatch, "layer_schedules")

  def runs(curve, loss):
    return [
      {"test_loss": loss, "test_accuracy": 0.9, "best_epoch": 4, "train_loss": curve, "seconds": 1}
    ]

  curves = {
    "uniform": ([2.0, 1.0, 0.5, 0.4], 0.2),
    "discriminative": ([2.0, 1.5, 1.2, 1.1], 0.3),
    "smith": ([1.5, 0.9, 0.5, 0.4], 0.1),
    "smith-reverse": ([2.0, 1.9, 1.0, 0.5], 0.2),
  }
  result = {"epochs": 8, "num_layers": 3, "runs": {}}
  for optimizer in ("sgd", "alrao-sgd"):
    for name, (curve, loss) in curves.items():
      result["runs"][f"{optimizer}/{name}"] = runs(curve, loss)
  lines = layers.report({"digits": result}, [])
  rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| digits | SGD")}
  # target: the uniform curve at a quarter of 8 epochs (epoch 2): 1.0
  assert rows["uniform"].endswith("| 2.0 | 1.0000 |")
  assert rows["smith"].endswith("| 2.0 | 1.0000 |") and "| 0.500 |" in rows["smith"]
  assert rows["smith-reverse"].endswith("| 3.0 | 1.0000 |")
  assert "0 of 1 reach it" in rows["discriminative"]
  text = "\n".join(lines)  # one seed: no spread, so any difference counts
  assert "- digits, SGD: better than uniform beyond the seeds' spread: smith;" in text
  assert "worse: discriminative; faster to the target on every seed: none." in text


def test_tune_rules_scores_each_rule_from_the_grid_by_interpolation(monkeypatch):
  rules = _import(monkeypatch, "tune_rules")
  rates = [0.01, 0.0316, 0.1, 0.316, 1.0]

  def record(test, valid, race_valid, valley):
    race = [0.0316, 0.1, 0.316]  # the suggestion 0.1 and its neighbours, from 2.3
    return {
      "suggestion": 0.1,
      "confidence": "high",
      "valley": valley,
      "race_rates": race,
      "race_valid": race_valid,
      "race_start": 2.3,
      "race_best": race[race_valid.index(min(race_valid))],
      "tune_lr": race[rules.race_pick(race, race_valid, 2.3, 0.1, tolerance=0.2)],
      "minimum": 0.1,
      "rates": rates,
      "test": test,
      "valid": valid,
      # the grid race: 0.316 leads after 2 epochs, 0.1 from the 5th on
      "valid_by_epoch": [
        [3, 3, 3, 3, 3],
        [2, 2, 2, 2, 2],
        [2, 1.5, 1, 1, 0.5],
        [1, 1, 1, 1, 1],
        [9, 9, 9, 9, 9],
      ],
    }

  seeds = [  # seed 0: 0.316 fell 0.8, the suggestion 0.6 (kept with a tolerance of 0.3 only)
    record([4.0, 2.0, 1.0, 3.0, float("inf")], [3, 2, 0.5, 1, 9], [1.9, 1.7, 1.5], 0.01),
    record([4.0, 2.0, 2.0, 2.0, float("inf")], [3, 2, 0.5, 1, 9], [1.9, 1.5, 1.7], 0.1),
  ]
  assert rules.tuned_rate(seeds) == 0.1  # of 0.01, 0.1, 1: the lowest mean validation loss
  assert rules.sgd_at(seeds[0], 0.0562) == pytest.approx(1.0 + 1.0 * 0.5, rel=1e-2)
  assert rules.sgd_at(seeds[0], 2.0) == float("inf")  # beyond the rates that trained
  table = rules.score({"toy": seeds})
  race = table["the 2-epoch race's best (tune until 2026-12-02)"]["toy"]
  assert race == pytest.approx({"mean": (3.0 + 1.0) / 2, "worst": 3.0, "decades": 0.25}, abs=1e-3)
  assert (
    table["tune: the suggestion unless the 2-epoch race clearly beat it (tolerance 0.2)"]["toy"]
    == race
  )
  assert table["the same with tolerance 0.1"]["toy"] == race
  kept = table["the same with tolerance 0.3"]["toy"]
  assert kept == pytest.approx({"mean": 1.0, "worst": 1.0, "decades": 0.0}, abs=1e-3)
  assert table["race of the whole grid, 2 epochs"]["toy"]["worst"] == pytest.approx(3.0)
  assert table["race of the whole grid, 5 epochs"]["toy"]["mean"] == pytest.approx(1.0)
  geometric = table["geometric mean of the race's best and the valley"]["toy"]
  assert geometric["decades"] == pytest.approx((-0.25 + 0) / 2, abs=1e-3)  # sqrt(0.316 * 0.01)
  text = rules.report({"toy": seeds}, ["# header", ""])
  assert "| race of the whole grid, 5 epochs | 1.00, 1.00 (+0.00) * |" in text


def test_tune_races_scores_each_seed_against_its_own_decade_sweep_pick(monkeypatch, tmp_path):
  races = _import(monkeypatch, "tune_races")
  rates = [1e-5, 1e-4, 1e-3, 0.01, 0.0316, 0.1, 0.316, 1.0, 10.0]

  def record(valid, test, pick, best, confidence="medium"):
    found = {
      name: {"pick": pick, "best": best, "epochs": 2, "seconds": 1.0} for name in races.RACES
    }
    return {
      "suggestion": 0.1,
      "confidence": confidence,
      "reasons": ["the body and the copies disagree: ..."] if confidence == "medium" else [],
      "knee": 0.178,
      "races": found,
      "rates": rates,
      "valid": valid,
      "test": test,
    }

  inf = float("inf")
  seeds = [  # seed 0's sweep picks 0.1 (0.316 is no decade); seed 1's picks 1.0
    record([9, 9, 5, 3, 2, 1, 0.5, 2, inf], [9, 9, 5, 3, 2, 1.0, 2.0, 2, inf], 0.316, 0.316),
    record([9, 9, 5, 3, 2, 2, 1, 1, inf], [9, 9, 5, 3, 2, 4.0, 2.0, 2, inf], 0.1, 1.0, "high"),
  ]
  assert [races.seed_pick(r) for r in seeds] == [5, 7]
  table = races.score({"toy": seeds})
  picked = table["2 epochs: race_pick (tune today)"]["toy"]  # 2.0 / 1.0 and 4.0 / 2.0
  assert picked == pytest.approx({"mean": 2.0, "worst": 2.0, "decades": -0.25}, abs=1e-3)
  best = table["2 epochs, annealed: the race's best"]["toy"]  # 2.0 / 1.0 and 2.0 / 2.0
  assert best == pytest.approx({"mean": 1.5, "worst": 2.0, "decades": 0.25}, abs=1e-3)
  gate = table["the suggestion if its confidence is high, else tune's pick"]["toy"]
  assert gate["worst"] == pytest.approx(2.0) and gate["mean"] == pytest.approx(2.0)
  text = races.report({"toy": seeds}, {"toy": seeds}, ["# header", ""])
  assert "| 2 epochs: race_pick (tune today) | 2.00, 2.00 (-0.25) | 0 of 1 |" in text
  # seed 1 said "high" a decade below its pick; seed 0's "medium" suggestion was its pick
  # both seeds' finer pick is 0.316 (lowest validation loss), half a decade from 0.1
  assert "| high | 2 | 0 | 2 | 2.00, 2.00 | toy 1 (-1.00; 0.178), toy 1 (-1.00; 0.178) |" in text
  assert "| medium | 2 | 2 | 2 | 1.00, 1.00 | - |" in text and "| low | 0 | 0 | - | - | - |" in text
  assert "on 0 of 2 seeds: the goal is **missed**" in text
  assert "finer grid's pick, \"high\" was within half a decade on 2 of 2 seeds" in text
  assert "at worst 2.00x the decade pick's test loss (2 seeds measured)" in text
  assert "the body's knee over half a decade away (2)" in text
  # printed again from its .json (a diverged rate's NaN written as null) under its .md's header
  folder = tmp_path / "results"
  folder.mkdir()
  seeds[1]["valid"][-1] = float("nan")
  (folder / "r.json").write_text(alrao_strict_json.dumps({"bundled": {"toy": seeds}, "own": {}}))
  (folder / "r.md").write_text("# r\n\nCommand: `x`.\n\n## The bundled tasks\n\nold\n")
  for _ in range(2):  # the second time replaces the first's line
    again = races.main(["--report", str(folder / "r.json")])
  assert again == (folder / "r.md").read_text() and again.count("Re-rendered") == 1
  assert again.startswith("# r\n\nCommand: `x`.\n\nRe-rendered from the .json by `python ")
  assert "| 2 epochs: race_pick (tune today) | 2.00, 2.00 (-0.25) | 0 of 1 |" in again


def test_tune_adam_scores_tune_and_the_suggestion_against_each_seeds_adam_sweep(monkeypatch):
  bench = _import(monkeypatch, "tune_adam")

  def seed(pick_lr, suggestion, confidence, tune_loss, alone_loss):
    return {
      "suggestion": suggestion,
      "confidence": confidence,
      "reasons": [],
      "knee": None,
      "decade": {"pick_lr": pick_lr, "pick_loss": 2.0, "seconds": 10.0},
      "quarter": {"pick_lr": pick_lr, "pick_loss": 1.0, "seconds": 10.0},
      "alrao_epochs": 5,
      "alrao_seconds": 2.0,
      "race_rates": 6,
      "race_epochs": 1,
      "race_seconds": 1.0,
      "tune_lr": suggestion,
      "tune_loss": tune_loss,
      "alone_loss": alone_loss,
    }

  seeds = [seed(1e-3, 1.2e-3, "high", 2.0, 2.0), seed(1e-2, 1e-4, "high", 2.2, 3.0)]
  found = bench.summary(seeds)  # tune: 2/2 and 2.2/2; the suggestion alone: 2/2 and 3/2
  assert found["tune"] == pytest.approx(
    {"mean": 1.05, "worst": 1.1, "quarter_mean": 2.1, "quarter_worst": 2.2, "seconds": 3.0,
     "share": 0.3}
  )
  assert found["alone"]["mean"] == pytest.approx(1.25) and found["alone"]["share"] == 0.2
  own = {"net": [{"suggestion": 0.1, "confidence": "medium", "reasons": [], "knee": 0.3,
                  "pick_lr": 1.0}]}
  text = bench.report({"toy": seeds}, own, ["# header", ""])
  assert "| toy | 0.001, 0.01 | 10 | 1.050, 1.100 | 2.100, 2.200 | 3, 30% |" in text
  # seed 1 said "high" two decades below its pick; the own network's "medium" a decade below
  # the bundled seeds' finer (quarter) pick is their decade pick; the own network has none
  assert "| high | 2 | 1 | 1 | 1.25, 1.50 | toy 1 (-2.00; nan) |" in text
  # seed 0's rate is 0.08 decades from its pick: not "the same rate" of the noise line
  assert "The noise" not in text
  near = [seed(1e-3, 1.05e-3, "high", 2.4, 2.4), *seeds]
  noisy = bench.report({"toy": near}, own, ["# header", ""])
  assert "| high | 3 | 2 | 2 | " in noisy  # every seed had a finer pick: no "(of ...)"
  assert "Adam's test loss over the sweep member's was 1.20 (toy 0)." in noisy
  assert "| medium | 1 | 0 | - | - | net 0 (-1.00; 0.3) |" in text
  assert "tune(optimizer='adam') meets the three goals on 1 of 1 tasks (toy)" in text
  assert "suggestion alone meets the three goals on 0 of 1 tasks (none)" in text


def test_recurrent_spread_moves_the_last_bits_and_reports_each_seeds_spread(monkeypatch):
  bench = _import(monkeypatch, "recurrent_spread")
  params = {"kernel": np.linspace(0.5, 2.0, 1000, dtype=np.float32).reshape(10, 100)}
  assert bench.perturbed(params, 0) is params
  moved = np.asarray(bench.perturbed(params, 1)["kernel"])
  relative = np.abs(moved / params["kernel"] - 1)
  assert 0 < relative.max() < 1e-6 and (relative > 0).mean() > 0.2  # last bits, many entries
  runs = {"Alrao": [1.0, 1.5, 1.2, 1.0, 1.0], bench.SGD: [0.5] * 5, bench.CLIPPED_SGD: [1.0] * 5}
  record = {"rates": {bench.SGD: 0.1, bench.CLIPPED_SGD: 1.0}, "runs": runs}
  text = bench.report({"toy": [record]}, ["# header"])
  assert "| Alrao | 0 | 1.000, 1.500, 1.200, 1.000, 1.000 | 50% | 2.28 | 1.14 |" in text
  assert "| SGD at the sweep's pick (0.1) | 0 | 0.500, 0.500" in text
  assert f"| {bench.CLIPPED_SGD} (1) | 0 | 1.000, 1.000" in text
  assert "- Alrao: spread 50% to 50% over the seeds; mean test loss 2.28x" in text
  assert "1.14x clipped SGD at its pick (worst seed 1.14x)" in text
  # the clipped optimizers cut a large gradient to the global norm CLIP before the rate
  grads = {"w": np.full(4, 10.0, np.float32)}
  tx = bench.clipped_sgd(0.5)
  update, _ = tx.update(grads, tx.init(grads))
  assert float(np.linalg.norm(update["w"])) == pytest.approx(0.5 * bench.CLIP, rel=1e-5)


def test_adam_interval_report_divides_each_seed_by_tuned_adam(monkeypatch):
  bench = _import(monkeypatch, "adam_interval")

  def row(tuned, default, narrow, two, ranged, interval=(1e-5, 0.1)):
    found = {"default": default, "narrow": narrow, "two decades": two, "range test": ranged}
    spans = {**bench.FIXED, "range test": interval}
    return {
      "tuned_loss": tuned,
      "usual_loss": 1.5 * tuned,
      "notes": [] if np.isfinite(interval[0]) else ["flat: the loss never fell"],
      **{n: {"interval": list(spans[n]), "loss": v} for n, v in found.items()},
    }

  nan = float("nan")
  results = {
    "toy": {
      "epochs": 2,
      "tuned_lr": 0.01,
      # seed 1's range test was flat: no interval, no run
      "rows": [row(0.1, 0.3, 0.1, 0.2, 0.05), row(0.2, 0.2, 0.3, 0.2, nan, (nan, nan))],
    }
  }
  text = "\n".join(bench.report(results, ["# header", ""]))
  # default: 3 and 1 -> mean 2, worst 3; narrow 1 and 1.5; two decades 2 and 1; range test 0.5
  assert (
    "| toy | 0.01 | 1.500 | 2.000, 3.000 | 1.250, 1.500 | 1.500, 2.000 | 0.500, 0.500, 1 seed(s) "
    "without | [1e-05, 0.1], [nan, nan] |" in text
  )
  assert "- toy: the closest to tuned Adam is the range test interval (0.500)" in text
  assert "- The narrow interval beats the default on 1 of 1 tasks (toy)." in text
  assert "- toy seed 1: flat: the loss never fell" in text
  # a run that diverged (test loss inf) is the worst, not a seed without an interval
  results["toy"]["rows"][0]["narrow"]["loss"] = float("inf")
  text = "\n".join(bench.report(results, ["# header", ""]))
  assert "| toy | 0.01 | 1.500 | 2.000, 3.000 | inf, inf | 1.500, 2.000 |" in text
  assert "- The narrow interval beats the default on 0 of 1 tasks." in text


def test_one_run_report_counts_a_diverged_run_and_names_a_missing_interval(monkeypatch):
  bench = _import(monkeypatch, "one_run")
  nan, inf = float("nan"), float("inf")

  def row(default, below):
    return {
      "tuned_lr": 1.0,
      "tuned_loss": 0.2,
      "range_test_seconds": 1.0,
      "notes": ["flat"],
      "default": {"interval": [1e-5, 10.0], "loss": default},
      "range test": {"interval": [nan, nan], "loss": nan},
      "centred": {"interval": [nan, nan], "loss": nan},
      "below the top": {"interval": [1e-3, 10.0], "loss": below},
    }

  text = "\n".join(bench.report([row(0.4, inf), row(0.6, 0.3)], ["# header", ""]))
  # default 2 and 3; below the top diverged on seed 0: inf, not "no interval"
  assert "default interval 2.500, below the top interval inf." in text
  assert "Closest to tuned SGD: the default interval." in text
  assert "No range test interval (nan)" in text and "No below the top interval" not in text


def test_every_json_file_of_the_project_parses_with_a_strict_parser():
  """NaN and Infinity are not JSON (Python writes them by default): results hold null."""
  import subprocess

  from conftest import strict_json

  tracked = subprocess.run(
    ["git", "ls-files", "*.json", "*.jsonl"], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout.split()
  assert any(name.startswith("benchmarks/results/") for name in tracked)
  for name in tracked:
    text = (ROOT / name).read_text()
    lines = text.splitlines() if name.endswith(".jsonl") else [text]
    for line in lines:
      strict_json(line)


def test_the_header_rebuilds_the_command_from_the_options_given(monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  sys.modules.pop("header", None)
  from header import command_line

  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument("--name", default="tune")
  parser.add_argument("--rounds", type=int, default=10)
  line = "python benchmarks/tune.py"
  assert command_line("tune.py", parser, parser.parse_args([])) == line
  args = parser.parse_args(["--rounds", "3", "--name", "tune_amd", "--quick"])
  assert command_line("tune.py", parser, args) == f"{line} --quick --name tune_amd --rounds 3"


def test_real_data_report_shows_perplexity_relative_to_the_sweep_and_flags_the_cap(
  monkeypatch, tmp_path
):
  bench = _import(monkeypatch, "real_data")
  inf, nan = float("inf"), float("nan")

  def row(method, loss, *, lr=None, seconds=nan, best=2, **more):
    return {
      "method": method,
      "lr": lr,
      "test_loss": loss,
      "test_accuracy": nan,
      "best_epoch": best,
      "epochs": 3,
      "seconds": seconds,
      "seed": 0,
      **more,
    }

  grid = [row(f"sgd grid member {lr:g}", inf, lr=lr, valid_loss=inf) for lr in bench.SGD_GRID]
  grid[5] = row("sgd grid member 1", 5.0, lr=1.0, valid_loss=5.1)
  rows = [
    *grid,
    row("tuned sgd (sweep)", 5.0, lr=1.0, seconds=70.0),
    row("sgd at the sweep's rate", 5.0, lr=1.0, seconds=10.0),
    *(row(name, 5.5, seconds=12.0) for name in bench.PEERS),
    row("alrao-sgd", 5.2, seconds=25.0, best=3),
    row("alrao-sgd, copies retired", 5.21, seconds=15.0),
    row("suggest_lr, then sgd", 5.1, lr=0.5, seconds=35.0),
    row(
      "tune",
      5.0,
      lr=1.0,
      seconds=40.0,
      confidence="high",
      race_rates=[0.3, 1.0, 3.0],
      choose_seconds=20.0,
    ),
  ]
  text = bench.report({"task": "ptb-word", "epochs": 3, "rows": rows}, ["# header", ""])
  # perplexity exp(5.2) = 181.272, over exp(5.0): exp(0.2) = 1.221; 25 s = 2.5 plain runs
  assert "| alrao-sgd | - | 181.272 | 1.221 | - | 3.0 / 3.0 | 25 | 2.50 |" in text
  assert "| tuned sgd (sweep) | 1 | 148.413 | 1.000 |" in text
  assert "| 1e-05 | inf | inf | 2.0 / 3.0 |" in text  # a diverged member stays inf
  assert "at the cap of 3 (still improving when the budget ended): alrao-sgd." in text
  assert "seed 0: 0.3, 1, 3 (suggestion confidence high)" in text
  assert "1.10x tuned SGD's perplexity: 1.221x (**missed**)" in text
  peer = bench.LR_FREE[0]  # every peer at 5.5: the first is the best
  assert f"peer ({peer}, 5.5000): Alrao-SGD 5.2000, -0.3000 (met)" in text
  assert "program (7.00 plain runs) and 7 plain runs one by one: 2.50 plain runs (met)" in text
  # 40 s of the sweep's 70, 20 of them choosing the rate (the Alrao run and the race)
  assert "1.000x (worst seed 1.000x) in 57% (**missed**); choosing the rate" in text
  assert "as `benchmarks/tune.py` counts): 29%." in text
  # exp(0.01) = 1.010 in perplexity; 5.21 / 5.2 = 1.002 in loss
  assert "worse perplexity than every copy: 1.50 plain runs, 1.010x (met)" in text
  # SGD stopped after 1 of the 3 epochs: a plain run of the budget is 3 x its 10 s; the vmapped
  # sweep, 70 s, is more than 7 such runs, which are the sweep's cost then
  early = [{**r, "epochs": 1} if r["method"] == "sgd at the sweep's rate" else r for r in rows]
  text = bench.report({"task": "ptb-word", "epochs": 3, "rows": early}, ["# header", ""])
  assert "| alrao-sgd | - | 181.272 | 1.221 | - | 3.0 / 3.0 | 25 | 0.83 |" in text
  assert "program (2.33 plain runs) and 7 plain runs one by one: 0.83 plain runs (met)" in text
  # a finished run's report again from its .json, under its .md's header, the unit changed
  folder = tmp_path / "results"
  folder.mkdir()
  old_rows = [{**r, "plain_runs": 99.0} for r in early]
  (folder / "r.json").write_text(json.dumps({"task": "ptb-word", "epochs": 3, "rows": old_rows}))
  (folder / "r.md").write_text(f"# r\n\nBudget: ... seed. {bench.OLD_PLAIN_RUNS}\n\n| method |\n")
  for _ in range(2):  # the second time replaces the first's line
    again = bench.main(["--report", str(folder / "r.json")])
  assert again == (folder / "r.md").read_text() and again.count("Re-rendered") == 1
  assert again.startswith(f"# r\n\nBudget: ... seed. {bench.PLAIN_RUNS}\n\nRe-rendered from")
  assert "| alrao-sgd | - | 181.272 | 1.221 | - | 3.0 / 3.0 | 25 | 0.83 |" in again
  assert "plain_runs" not in (folder / "r.json").read_text()
  with pytest.raises(SystemExit):  # a training option beside --report is refused, not ignored
    bench.main(["--report", str(folder / "r.json"), "--seeds", "2"])
  fashion = bench.report({"task": "fashion-cnn", "epochs": 3, "rows": rows}, [])
  assert "| alrao-sgd | - | 5.200 | 1.040 |" in fashion
  assert "1.10x tuned SGD's loss: 1.040x (met)" in fashion
  assert "worse loss than every copy: 1.50 plain runs, 1.002x (met)" in fashion
  slow = [dict(r, test_loss=5.6) if r["method"] == "alrao-sgd" else r for r in rows]
  missed = bench.report({"task": "fashion-cnn", "epochs": 3, "rows": slow}, [])
  assert "1.10x tuned SGD's loss: 1.120x (**missed**)" in missed
  assert "-0.3000" not in missed and "+0.1000 (**missed**)" in missed


def test_retire_copies_report_scores_each_rule_against_the_sweep_and_the_full_head(monkeypatch):
  bench = _import(monkeypatch, "retire_copies")
  history = [{"posterior": [0.5, 0.5, 0.0]}, {"posterior": [1.0, 0.0, 0.0]}]
  assert bench.live_per_epoch(history) == [2, 1]

  def row(method, perplexity, seconds, live=(), epochs=6):
    loss = float(np.log(perplexity))
    return {
      "method": method,
      "test_loss": loss,
      "seconds": seconds,
      "epochs": epochs,
      "seed": 0,
      "live": list(live),
    }

  cheap, dear = bench.rule_name(1e-3, 2), bench.rule_name(1e-2, 1)
  rows = [
    row("7-rate sgd sweep", 700.0, 1000.0),
    row("sgd at the sweep's pick", 720.0, 50.0, epochs=3),  # stopped early: 100 s for all 6
    row(bench.FULL, 600.0, 400.0, (6, 6)),
    row(cheap, 606.0, 300.0, (6, 3)),  # 1.01x, 0.30 of the sweep: both met
    row(dear, 630.0, 1200.0, (6, 1)),  # 1.05x, 1.20 of the sweep: neither
  ]
  text = bench.report({"rows": rows, "budget": {"epochs": 6}}, ["# header", ""])
  assert f"| {cheap} | 0 | 606.0 | 1.010 | 6, 3 | 300 | 3.00 | 0.30 |" in text
  assert f"| {bench.FULL} | 0 | 600.0 | 1.000 | 6, 6 | 400 | 4.00 | 0.40 |" in text
  assert f"{cheap}: 0.30 of the sweep's wall time (met: below 1), 1.010x" in text
  assert "1.010x the full head's perplexity (met: at most 1.02)" in text
  assert f"{dear}: 1.20 of the sweep's wall time (NOT met: below 1), 1.050x" in text
  assert "1.050x the full head's perplexity (NOT met: at most 1.02)" in text


def test_gpu_full_size_hands_each_benchmark_options_its_parser_takes(monkeypatch, capsys):
  gpu = _import(monkeypatch, "gpu_full_size")

  class ParsedError(Exception):
    pass

  parsed, parse = [], argparse.ArgumentParser.parse_args

  def parse_then_stop(self, args=None, namespace=None):
    parsed.append(parse(self, args, namespace))
    raise ParsedError

  names = {}
  for size in ("full", "quick", "smoke"):
    for label, module, argv in gpu.parts(size):
      monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
      with pytest.raises(ParsedError):  # the options parse; nothing runs
        module.main(argv)
      monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
      names[size, label] = parsed[-1]
  full = names["full", "real_data ptb-word"]
  assert full.full and full.name == "real_data_ptb-word_gpu" and full.task == "ptb-word"
  quick = names["quick", "real_data fashion-cnn"]
  assert not quick.full and quick.name == "real_data_fashion-cnn_gpu_quick"
  assert names["full", "crossover"].widths.endswith("4096")
  assert names["full", "large_head"].out.endswith("large_head_gpu.md")
  assert names["smoke", "crossover"].quick and names["smoke", "large_head"].quick
  # the full and quick sizes are hours on a CPU: refused there, by name
  monkeypatch.setattr(gpu.jax, "default_backend", lambda: "cpu")
  with pytest.raises(SystemExit):
    gpu.main([])
  assert "no accelerator" in capsys.readouterr().err
