"""Sphinx configuration of the alrao-jax docs (Sphinx + MyST, as optax and Flax build theirs).

``make docs`` builds them into ``docs/_build/html`` with warnings as errors. The benchmark
results are copied in from ``benchmarks/results/`` at every build, so the pages show the files
the benchmarks wrote.
"""

import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import alrao_jax  # noqa: E402

project = "alrao-jax"
author = "the alrao-jax developers"
copyright = "2026, the alrao-jax developers"
release = version = alrao_jax.__version__

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "sphinx_copybutton",
]
copybutton_exclude = ".linenos, .gp, .go"  # prompts and outputs are not copied
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
add_module_names = False

html_theme = "sphinx_book_theme"
html_title = f"alrao-jax {release}"
html_theme_options = {"show_toc_level": 2, "home_page_in_toc": True}
html_static_path = ["_static"]
html_css_files = ["custom.css"]  # wide tables scroll, command outputs wrap


def _copy_results() -> None:
  """The benchmarks' result files, as pages of the site (``docs/benchmarks/``, not tracked)."""
  source, target = ROOT / "benchmarks" / "results", DOCS / "benchmarks"
  shutil.rmtree(target, ignore_errors=True)
  target.mkdir()
  for path in sorted(source.iterdir()):
    if path.suffix in (".md", ".png"):
      shutil.copy2(path, target / path.name)


_copy_results()
