"""Penn Treebank at the word level (Mikolov's simple-examples, the LSTM task of Zaremba et al.
2014 and of the Alrao paper's section 5): 929k training, 73k validation and 82k test tokens, a
vocabulary of 10,000 words (``<unk>`` and the end of sentence ``<eos>`` included)."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from alrao_jax.experiments.data import _sequences
from alrao_jax.experiments.data_files import DataSource, check_md5, locate
from alrao_jax.splits import Splits

FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
END_OF_SENTENCE = "<eos>"
PTB_WORD = DataSource(
  name="ptb-word",
  files=FILES,
  env="ALRAO_PTB_WORD",
  debian=None,
  md5={
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
  },
  urls={name: "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz" for name in FILES},
  how="Download http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz, extract "
  "data/ptb.train.txt, ptb.valid.txt and ptb.test.txt into a folder and pass it (--data, or "
  "ALRAO_PTB_WORD).",
)


def read_words(path: pathlib.Path, expected_md5: str | None = None) -> list[str]:
  """The words of a PTB file, an ``<eos>`` closing each line (Zaremba et al.'s reading).

  Raises:
    ValueError: a file whose MD5 is not ``expected_md5``.
  """
  data = path.read_bytes()
  if expected_md5 is not None:
    check_md5(path, expected_md5, data)
  words = []
  for line in data.decode("utf-8").splitlines():
    words.extend(line.split())
    words.append(END_OF_SENTENCE)
  return words


def load_ptb_word(
  *,
  batch_size: int = 20,
  bptt: int = 35,
  directory: str | os.PathLike | None = None,
  tokens: int | None = None,
) -> tuple[Splits, list[str]]:
  """Word-level Penn Treebank as streams for truncated BPTT, checked against the publisher's
  MD5s: the publisher's training, validation and test files as the three splits.

  Each split is cut into ``batch_size`` contiguous streams and windows of ``bptt`` words
  (rows ``[i * batch_size, (i + 1) * batch_size)`` are window ``i`` of every stream, as
  :func:`alrao_jax.fit` with ``carry`` reads them). The vocabulary is the training file's
  10,000 words, sorted, so that word ``i`` is the same on every machine. The files are looked
  for as :func:`alrao_jax.experiments.data_files.locate` says (``$ALRAO_PTB_WORD``,
  ``../shared/data/ptb-word``, the download cache, the publisher's archive).

  Args:
    batch_size: number of parallel streams.
    bptt: words per window.
    directory: a folder holding the three files.
    tokens: keep only the first ``tokens`` words of each file (a quick size for tests).

  Returns:
    ``(splits, vocabulary)``: int32 inputs and next-word targets of shape ``(rows, bptt)``.

  Raises:
    FileNotFoundError: the files are nowhere (the message lists the places looked).
    ValueError: a file that is not the publisher's, or too few words for the streams.
  """
  folder = locate(PTB_WORD, directory)
  train, valid, test = (read_words(folder / name, PTB_WORD.md5[name]) for name in FILES)
  vocabulary = sorted(set(train))
  index = {word: i for i, word in enumerate(vocabulary)}
  splits = []
  for name, words in zip(FILES, (train, valid, test), strict=True):
    words = words if tokens is None else words[:tokens]
    unknown = sorted({w for w in words if w not in index})
    if unknown:  # the publisher's files map every rare word to <unk>
      raise ValueError(f"{name} holds words the training file lacks: {unknown[:5]}")
    splits.append(_sequences(np.array([index[w] for w in words], np.int32), batch_size, bptt))
  return Splits(*splits), vocabulary
