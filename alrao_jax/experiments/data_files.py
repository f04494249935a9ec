"""Where a bundled task's data files are found: the folder given, an environment variable, the
project's shared data (``../shared/data``), the folder a Debian package installs, the download
cache, and last the publisher's download where the machine is online. Offline with nothing
found, one error lists every place looked and how to get the files."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

DATA_ROOT = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer before a download is given up


class DataSource(NamedTuple):
  """Where one data set's files live and how to check them."""

  name: str  # e.g. "fashion-mnist": the shared and the cache folders' name
  files: tuple[str, ...]  # the file names a folder must hold
  env: str  # the environment variable that names a folder
  debian: str | None  # the folder a Debian package installs the files into
  md5: Mapping[str, str]  # file -> MD5 of its contents (of the unzipped bytes for .gz)
  urls: Mapping[str, str]  # file -> the publisher's URL (or an archive's, see fetch)
  how: str  # how to get the files, for the error


def cache_dir(name: str) -> pathlib.Path:
  """The download cache of data set ``name``: ``$XDG_CACHE_HOME/alrao-jax/data/<name>``."""
  home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(home) / "alrao-jax" / "data" / name


def places(
  source: DataSource, directory: str | os.PathLike | None
) -> list[tuple[str, pathlib.Path]]:
  """The folders looked in, in order, each with why it is looked in."""
  found = []
  if directory is not None:
    found.append(("the folder given", pathlib.Path(directory)))
  if os.environ.get(source.env):
    found.append((f"${source.env}", pathlib.Path(os.environ[source.env])))
  found.append(("the project's shared data", DATA_ROOT / source.name))
  if source.debian is not None:
    found.append(("Debian's package folder", pathlib.Path(source.debian)))
  found.append(("the download cache", cache_dir(source.name)))
  return found


def _holds(folder: pathlib.Path, files: Sequence[str]) -> bool:
  return all((folder / name).is_file() for name in files)


def locate(
  source: DataSource,
  directory: str | os.PathLike | None = None,
  *,
  download: Callable[[DataSource, pathlib.Path], None] | None = None,
) -> pathlib.Path:
  """The first folder that holds every file of ``source``; downloaded into the cache when
  none does and the publisher answers.

  Args:
    source: the data set.
    directory: a folder to look in first (e.g. the command line's ``--data``); when given and
      it lacks the files, that is an error of its own (no other place is looked in).
    download: how to fetch the files into a folder (default :func:`fetch`).

  Returns:
    The folder.

  Raises:
    FileNotFoundError: no folder holds the files and the download failed; the message lists
      every place looked, the files, and how to get them.
  """
  if directory is not None and not _holds(pathlib.Path(directory), source.files):
    missing = [n for n in source.files if not (pathlib.Path(directory) / n).is_file()]
    raise FileNotFoundError(
      f"{directory} lacks the {source.name} files {missing}; point to the folder that holds "
      f"{', '.join(source.files)} ({source.how})."
    )
  looked = places(source, directory)
  for _, folder in looked:
    if _holds(folder, source.files):
      return folder
  target = cache_dir(source.name)
  try:
    (download or fetch)(source, target)
  except (OSError, urllib.error.URLError, tarfile.TarError, ValueError) as err:
    where = "; ".join(f"{why}: {folder}" for why, folder in looked)
    raise FileNotFoundError(
      f"the {source.name} files ({', '.join(source.files)}) are in none of the places looked "
      f"in ({where}), and the download failed ({err}). {source.how}"
    ) from err
  return target


def fetch(source: DataSource, target: pathlib.Path) -> None:
  """Downloads the files of ``source`` into ``target``, each checked against its MD5 before it
  is moved in (a file of a ``.tgz`` URL is extracted from that archive).

  Raises:
    OSError, urllib.error.URLError: no answer; ValueError: a file whose MD5 differs.
  """
  target.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target) as staging:
    staged = pathlib.Path(staging)
    archives: dict[str, pathlib.Path] = {}
    for name in source.files:
      url = source.urls[name]
      if url.endswith((".tgz", ".tar.gz")):
        if url not in archives:
          archives[url] = staged / f"archive{len(archives)}.tgz"
          _download(url, archives[url])
        _extract(archives[url], name, staged / name)
      else:
        _download(url, staged / name)
      check_md5(staged / name, source.md5[name])
    for name in source.files:
      shutil.move(staged / name, target / name)


def _download(url: str, path: pathlib.Path) -> None:
  with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as answer, path.open("wb") as f:
    shutil.copyfileobj(answer, f)


def _extract(archive: pathlib.Path, name: str, path: pathlib.Path) -> None:
  """The member of ``archive`` whose file name is ``name`` (in any folder of it)."""
  with tarfile.open(archive) as tar:
    member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith("/" + name)), None)
    if member is None:
      raise ValueError(f"{archive.name} holds no {name}")
    with tar.extractfile(member) as src, path.open("wb") as dst:
      shutil.copyfileobj(src, dst)


def file_md5(path: pathlib.Path) -> str:
  """The MD5 of a file's contents; of the unzipped bytes for a ``.gz`` file."""
  import gzip

  digest = hashlib.md5(usedforsecurity=False)
  with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def check_md5(path: pathlib.Path, expected: str, data: bytes | None = None) -> None:
  """Raises a `ValueError` when ``path``'s contents (``data``, when read already: the unzipped
  bytes of a ``.gz`` file) are not the publisher's (MD5)."""
  found = file_md5(path) if data is None else hashlib.md5(data, usedforsecurity=False).hexdigest()
  if found != expected:
    raise ValueError(
      f"{path} is not the publisher's file (MD5 {found}, expected {expected}); download it "
      "again or point to an intact copy."
    )
