"""What every binary shares: flag parsing with one-line errors.

``cli.define_config_file`` and ``app.run(main, flags_parser=cli.parse_flags)`` turn a bad ``--config.*``
override (a typo'd field, a value of the wrong type, a config file that
doesn't load) into one ``error:`` line with ml_collections' "did you mean"
hint, instead of three chained tracebacks from inside absl.
"""

from __future__ import annotations

import ast
import sys

from absl import flags
from ml_collections import config_flags


def _one_line(e: BaseException) -> str:
  msg = str(e)
  if msg[:1] in "'\"":  # KeyError wraps its message in repr()
    try:
      msg = str(ast.literal_eval(msg))
    except (ValueError, SyntaxError):
      pass
  lines = [l.strip() for l in msg.splitlines() if l.strip()]
  hints = [l for l in lines if l.startswith("Did you mean")]
  if hints:  # ml_collections: "'key'\nDid you mean ..."
    return hints[0]
  return " ".join(lines)


def _flag_of(e: BaseException, argv: list[str]) -> str:
  """The --config.* argument that the error is about, when it can be told."""
  words = str(e).replace("'", " ").replace('"', " ").split()
  for arg in argv[1:]:
    name = arg.split("=", 1)[0].lstrip("-")
    if name.startswith("config.") and name.split(".")[-1] in words:
      return arg.split("=", 1)[0]
  return ""


def _fail(e: BaseException, argv: list[str]) -> None:
  where = _flag_of(e, argv)
  msg = _one_line(e)
  if isinstance(e, (AttributeError, KeyError)) and where:
    msg = f"{where}: no such config field. {msg}"
  elif where and where not in msg:
    msg = f"{where}: {msg}"
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


_PARSE_ERRORS = (AttributeError, KeyError, TypeError, ValueError, flags.Error)


def define_config_file(name: str, default: str, help_string: str) -> None:
  """``config_flags.DEFINE_config_file``, whose ``--config.*`` overrides are
  parsed already here (at import), with the errors as one line."""
  try:
    config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except _PARSE_ERRORS as e:
    _fail(e, sys.argv)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; errors become one ``error:`` line and exit code 2."""
  try:
    rest = flags.FLAGS(argv)
  except _PARSE_ERRORS as e:
    _fail(e, argv)
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if type(flag).__name__ == "_ConfigFlag" and flag.present:
      try:  # a config file that failed to load reports it only when used
        flag.value.keys()
      except (OSError, ImportError, SyntaxError, AttributeError) as e:
        print(f"error: --{name}: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
  return rest
