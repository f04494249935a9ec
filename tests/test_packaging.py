"""The package as users install it: an sdist that builds, a wheel built from that sdist that
installs and imports on its own (not from this checkout), with its typing marker, its version
and the command's entry point."""

import pathlib
import subprocess
import sys
import zipfile

import alrao_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT, env=None):
  result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
  return result.stdout


def test_the_sdist_builds_a_wheel_that_installs_and_imports_on_its_own(tmp_path):
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
  assert "alrao_jax/py.typed" in names and "alrao_jax/experiments/cli.py" in names
  assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
  entry_points = next(n for n in names if n.endswith("entry_points.txt"))
  assert (
    "alrao-jax = alrao_jax.experiments.cli:main"
    in zipfile.ZipFile(wheel).read(entry_points).decode()
  )
  site = tmp_path / "site"
  _run(python, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel))
  code = (
    "import alrao_jax, pathlib; "
    "print(alrao_jax.__version__, pathlib.Path(alrao_jax.__file__).parent.parent)"
  )
  out = _run(python, "-c", code, cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""})
  version, location = out.split()
  assert version == alrao_jax.__version__ and pathlib.Path(location) == site
