"""I/O failures read as one line: their errno, their first line, and the noise around them.

A full disk or a failed read reaches us as an ``OSError`` somewhere in an
exception's chain, or as a TensorStore error that only names the code in its
text. ``io_cause`` finds it; ``first_line`` shortens any error to its first
line. When an Orbax save or restore fails, Orbax logs the whole traceback and
TensorStore callbacks still in flight hit Orbax's closed event loop;
``install_quiet_hooks`` (called by the binaries' entry point, ``cli.run``, never
at import) keeps those tracebacks off the console, since the error is reported
once, as one line.
"""

from __future__ import annotations

import errno
import logging as py_logging
import os
import re
import sys
from typing import Optional

from absl import logging

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DISK_FULL_TEXT = {os.strerror(e).lower(): e for e in DISK_FULL}


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def io_cause(e: BaseException) -> tuple[Optional[int], Optional[OSError]]:
  """(errno, OSError) of an I/O failure anywhere in ``e``'s chain; None where unknown."""
  oserror = next((x for x in _chain(e) if isinstance(x, OSError)), None)
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno:
      return x.errno, oserror
    m = re.search(r"os_error_code='?(\d+)", str(x))  # TensorStore's errors are not OSErrors.
    if m:
      return int(m.group(1)), oserror
    text = str(x).lower()
    for msg, code in _DISK_FULL_TEXT.items():
      if msg in text:
        return code, oserror
  return None, oserror


def first_line(e: BaseException, limit: int = 200) -> str:
  text = str(e).strip().split("\n")[0] if str(e).strip() else type(e).__name__
  text = text.split(" [tensorstore_spec=")[0]  # TensorStore appends kilobytes of JSON.
  return text if len(text) <= limit else text[:limit] + "..."


def _is_closed_loop_error(e: Optional[BaseException]) -> bool:
  return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"


class _QuietIoTracebacks(py_logging.Filter):
  """Drops the tracebacks Orbax logs for I/O failures (and closed-loop callbacks).

  They are reported as one line (CheckpointWriteError, CorruptCheckpointError);
  Orbax's own error line stays, only its multi-screen traceback goes.
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    # asyncio logs "Task exception was never retrieved" for Orbax's write tasks.
    if record.exc_info and ("orbax" in record.pathname or record.name == "asyncio"):
      e = record.exc_info[1]
      if e is not None and (io_cause(e) != (None, None) or _is_closed_loop_error(e)):
        if record.name == "asyncio":
          return False  # Its message repeats the whole exception; the error line said it.
        record.exc_info, record.exc_text = None, None
    return True


def install_quiet_hooks() -> None:
  """Installs the filter above and a ``sys.unraisablehook`` wrapper, once.

  When an Orbax restore or save fails, TensorStore operations still in flight
  call back into Orbax's already closed event loop; Python prints each as a
  'RuntimeError: Event loop is closed' traceback, after the one-line error.
  """
  for logger in (logging.get_absl_logger(), py_logging.getLogger("asyncio")):
    if not any(isinstance(f, _QuietIoTracebacks) for f in logger.filters):
      logger.addFilter(_QuietIoTracebacks())
  previous = sys.unraisablehook
  if getattr(previous, "_vaegan_quiet", False):
    return

  def hook(unraisable):
    if not _is_closed_loop_error(unraisable.exc_value):
      previous(unraisable)
  hook._vaegan_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook

