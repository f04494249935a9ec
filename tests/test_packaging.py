"""The package as users install it: an sdist that builds, a wheel built from that sdist that
installs in a fresh virtual environment and imports there (not from this checkout), with its
typing marker, its version and the command's entry point."""

import pathlib
import subprocess
import sys
import zipfile

import alrao_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT, env=None):
  result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
  assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
  return result.stdout


def test_the_sdist_builds_a_wheel_that_installs_in_a_fresh_venv_and_runs_there(tmp_path):
  python = sys.executable
  _run(python, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), ".")
  (sdist,) = tmp_path.glob("alrao_jax-*.tar.gz")
  assert sdist.name == f"alrao_jax-{alrao_jax.__version__}.tar.gz"
  wheels = tmp_path / "wheels"
  _run(
    python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(sdist)
  )
  (wheel,) = wheels.glob("alrao_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "alrao_jax/py.typed" in names and "alrao_jax/experiments/cli/__init__.py" in names
  assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
  entry_points = next(n for n in names if n.endswith("entry_points.txt"))
  assert (
    "alrao-jax = alrao_jax.experiments.cli:command_line"
    in zipfile.ZipFile(wheel).read(entry_points).decode()
  )
  # A fresh virtual environment with the wheel installed; its dependencies are this
  # environment's (appended to its path by a .pth file, as no index is at hand), and this
  # checkout is neither on its path nor installed in it.
  fresh = tmp_path / "fresh"
  _run(python, "-m", "venv", "--without-pip", str(fresh))
  fresh_python = fresh / "bin" / "python"
  purelib = _run(str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
  ours = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
  (pathlib.Path(purelib.strip()) / "dependencies.pth").write_text(ours.strip() + "\n")
  _run(python, "-m", "pip", "--python", str(fresh_python), "install", "--no-deps", str(wheel))
  code = (
    "import alrao_jax, pathlib; "
    "print(alrao_jax.__version__, pathlib.Path(alrao_jax.__file__).parent.parent)"
  )
  out = _run(str(fresh_python), "-c", code, cwd=tmp_path)
  version, location = out.split()
  assert version == alrao_jax.__version__ and pathlib.Path(location) == pathlib.Path(
    purelib.strip()
  )
  assert (
    _run(str(fresh / "bin" / "alrao-jax"), "--version", cwd=tmp_path)
    .strip()
    .endswith(alrao_jax.__version__)
  )
