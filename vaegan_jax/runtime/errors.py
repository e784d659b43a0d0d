"""One base type for the faults a user can fix.

Every error whose message is one line that names the fix (a bad config, missing
data, no usable checkpoint, a locked workdir, a full disk, a non-finite loss)
derives from ``UserError``; each keeps its builtin base as well
(``CheckpointError(UserError, ValueError)``), so ``except ValueError`` still
catches it. The binaries catch ``UserError`` in one place (``cli.run``) and
print it as ``error: <message>`` with exit status ``exit_code``: no traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """A fault the user can fix; ``str(e)`` is one line that names the fix."""

  exit_code = 1


class FlagError(UserError, ValueError):
  """A command-line value the binary refuses (exit status 2, as absl's own flag errors)."""

  exit_code = 2
