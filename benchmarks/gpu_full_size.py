"""Issue 36's items 2-4 at full size on an accelerator: the paper's protocol on the whole of
Fashion-MNIST and word-level PTB, the width ladder up to 4096 units, the 10,000-word head.

Usage (on a machine with a GPU or TPU):
  python benchmarks/gpu_full_size.py          # writes results/*_gpu.{md,json,png}
  python benchmarks/gpu_full_size.py --quick  # the CPU sizes, as the CPU results were made
  python benchmarks/gpu_full_size.py --smoke  # seconds, any machine: tiny sizes, no file

Full size: ``real_data.py --full`` (every training and validation row, 20 epochs for
fashion-cnn and 15 for ptb-word, 3 seeds), ``crossover.py`` over widths 128 to 4096 on all
50,000 training images for 10 epochs, and ``large_head.py``. ``--quick`` runs the sizes the
CPU results were made at, written as ``*_gpu_quick``, to set GPU and CPU numbers side by side.
Each part's file gives its own command and wall time; the names end in ``_gpu`` so that the
CPU results stay beside them. On a machine without an accelerator the full and quick sizes
are refused: they are hours there (run each script alone, as its results file says).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import crossover
import large_head
import real_data

RESULTS = pathlib.Path(__file__).parent / "results"


def parts(size: str) -> list[tuple[str, object, list[str]]]:
  """(label, module, its argv) per part at ``size`` ("full", "quick" or "smoke")."""
  if size == "smoke":
    return [
      ("real_data fashion-cnn", real_data, ["--task", "fashion-cnn", "--quick"]),
      ("real_data ptb-word", real_data, ["--task", "ptb-word", "--quick"]),
      ("crossover", crossover, ["--quick"]),
      ("large_head", large_head, ["--quick"]),
    ]
  suffix = "_gpu" if size == "full" else "_gpu_quick"
  full = ["--full"] if size == "full" else []
  ladder = ["--widths", "128,256,512,1024,2048,4096", "--rows", "50000", "--epochs", "10"]
  return [
    *(
      (
        f"real_data {task}",
        real_data,
        ["--task", task, *full, "--name", f"real_data_{task}{suffix}"],
      )
      for task in ("fashion-cnn", "ptb-word")
    ),
    ("crossover", crossover, [*(ladder if size == "full" else []), "--name", f"crossover{suffix}"]),
    ("large_head", large_head, ["--out", str(RESULTS / f"large_head{suffix}.md")]),
  ]


def main(argv: list[str] | None = None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--quick", action="store_true", help="the CPU results' sizes")
  size.add_argument("--smoke", action="store_true", help="tiny sizes, any machine, no file")
  args = parser.parse_args(argv)
  chosen = "smoke" if args.smoke else "quick" if args.quick else "full"
  backend = jax.default_backend()
  if chosen != "smoke" and backend == "cpu":
    parser.error(
      f"JAX sees no accelerator (backend {backend!r}): the {chosen} sizes take hours on a CPU; "
      "run --smoke here, or each benchmark alone as its results file says"
    )
  done = []
  for label, module, part_argv in parts(chosen):
    start = time.perf_counter()
    print(f"== {label}: {' '.join(part_argv)}", flush=True)
    module.main(part_argv)
    done.append(f"{label}: {time.perf_counter() - start:.0f} s")
    print(f"== {done[-1]}", flush=True)
  return done


if __name__ == "__main__":
  print("\n".join(main()))
