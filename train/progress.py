"""Progress on a terminal as a bar, elsewhere as plain lines.

A progress bar redraws itself with carriage returns: fine on a terminal, but
a log file or a CI console gets every redraw (74 KB for a one-minute run).
When standard error is not a terminal, :func:`progress` returns a
:class:`PlainProgress` instead: one line per logged step and per phase.
"""

import sys
import time

from tqdm import tqdm


class _Bar(tqdm):
  """tqdm, plus the record hook of :class:`PlainProgress` (unused here)."""

  def record(self, step: int, values: dict) -> None:
    del step, values


class PlainProgress:
  """The methods of a tqdm bar that the program uses, as plain lines."""

  def __init__(self, total=None, initial=0, desc="", disable=False):
    self.total, self.n, self.desc, self.disable = total, initial, desc, disable
    self._start = time.perf_counter()
    self._iterable = None

  def __iter__(self):
    for item in self._iterable:
      yield item
      self.update(1)
    self.close()

  def update(self, count: int = 1) -> None:
    self.n += count

  def set_postfix(self, **values) -> None:
    del values

  def write(self, text: str) -> None:
    print(text, file=sys.stderr, flush=True)

  def record(self, step: int, values: dict) -> None:
    """One line for a logged step: loss and throughput."""
    if self.disable:
      return
    parts = [f"{self.desc} step {step}/{self.total}"]
    if "loss" in values:
      parts.append(f"loss {values['loss']:.4f}")
    if "tokens_per_second" in values:
      parts.append(f"{values['tokens_per_second']:,.0f} tok/s")
    self.write(", ".join(parts))

  def close(self) -> None:
    if self.disable or self._iterable is None:
      return
    seconds = time.perf_counter() - self._start
    self.write(f"{self.desc}: {self.n} steps in {seconds:.1f} s")
    self._iterable = None


def progress(iterable=None, **options):
  """A tqdm bar on a terminal, :class:`PlainProgress` lines elsewhere.

  Takes tqdm's ``iterable``, ``total``, ``initial``, ``desc`` and
  ``disable``; other tqdm options apply to the bar only.
  """
  if sys.stderr.isatty():
    return _Bar(iterable, **options)
  total = options.get("total")
  if total is None and hasattr(iterable, "__len__"):
    total = len(iterable)
  plain = PlainProgress(
    total=total,
    initial=options.get("initial", 0),
    desc=options.get("desc", ""),
    disable=options.get("disable", False),
  )
  plain._iterable = iterable
  return plain
