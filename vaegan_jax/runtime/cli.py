"""What every binary shares: flag parsing with one-line errors, a quiet console,
``UserError`` caught in one place (``run``).

``cli.define_config_file`` and ``cli.run(main)`` turn a bad ``--config.*``
override (a typo'd field, a value of the wrong type, a config file that
doesn't load) into one ``error:`` line with ml_collections' "did you mean"
hint, instead of three chained tracebacks from inside absl.
"""

from __future__ import annotations

import ast
import logging as py_logging
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vaegan_jax.runtime import errors
from vaegan_jax.runtime import io_errors


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


flags.DEFINE_bool("verbose", False, "Also show other libraries' INFO lines (Orbax, JAX), "
                  "which are hidden by default; their warnings and errors always show.")

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN = (_PACKAGE + os.sep, os.path.join(os.path.dirname(_PACKAGE), "experiments") + os.sep)
# Orbax warns about options that a read-only manager sets on purpose.
_NOISE = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")


class _ProjectConsole(py_logging.Filter):
  """Other libraries' INFO lines (and Orbax's read-only notes) off the console."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    own = os.path.abspath(record.pathname).startswith(_OWN)
    if own:
      return True
    if record.levelno < py_logging.WARNING:
      return False
    return not str(record.msg).startswith(_NOISE)


def quiet_console(verbose: bool = False) -> None:
  """The project's lines and other libraries' warnings/errors only (unless verbose)."""
  handler = logging.get_absl_handler()
  for f in list(handler.filters):
    if isinstance(f, _ProjectConsole):
      handler.removeFilter(f)
  if not verbose:
    handler.addFilter(_ProjectConsole())


_PARSE_ERRORS = (AttributeError, KeyError, TypeError, ValueError, flags.Error)


def _resolve_config_name(argv: list[str], name: str, configs_dir: str) -> None:
  """``--config=folder`` -> ``--config=<configs_dir>/folder.py`` (in place), from any
  directory; an existing path is left alone."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      j, value = i, arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      j, value = i + 1, argv[i + 1]
    else:
      continue
    path, sep, rest = value.partition(":")  # ml_collections: "file.py:argument"
    candidate = os.path.join(configs_dir, path + ("" if path.endswith(".py") else ".py"))
    if path and not os.path.exists(path) and os.path.exists(candidate):
      full = candidate + sep + rest
      argv[j] = f"--{name}={full}" if j == i else full


def define_config_file(name: str, default: str, help_string: str) -> None:
  """``config_flags.DEFINE_config_file``, whose ``--config.*`` overrides are
  parsed already here (at import), with the errors as one line. A bare name
  (``--config=folder``) means the file of that name beside ``default``."""
  configs_dir = os.path.dirname(os.path.abspath(default))
  _resolve_config_name(sys.argv, name, configs_dir)
  names = sorted(f[:-3] for f in os.listdir(configs_dir)
                 if f.endswith(".py") and not f.startswith("_"))
  help_string += f" A path, or a name in experiments/configs/: {', '.join(names)}."
  try:
    config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except _PARSE_ERRORS as e:
    _fail(e, sys.argv)


def _show_in_help(argv: list[str]) -> None:
  """``--help`` lists the main module's flags only: add ``--verbose`` and the config
  flags (defined through ml_collections, so absl files them elsewhere)."""
  main = argv[0] if argv else sys.argv[0]
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if name == "verbose" or type(flag).__name__ == "_ConfigFlag":
      flags.FLAGS.register_key_flag_for_module(main, flag)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; errors become one ``error:`` line and exit code 2."""
  _show_in_help(argv)
  try:
    rest = flags.FLAGS(argv)
  except _PARSE_ERRORS as e:
    _fail(e, argv)
  quiet_console(flags.FLAGS.verbose)
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if type(flag).__name__ == "_ConfigFlag" and flag.present:
      try:  # a config file that failed to load reports it only when used
        flag.value.keys()
      except (OSError, ImportError, SyntaxError, AttributeError) as e:
        print(f"error: --{name}: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
  return rest


def run(main: Callable[[list[str]], Any]) -> None:
  """The binaries' entry point: ``app.run(main)`` with one-line flag errors.

  Installs the quiet console (``parse_flags``) and the I/O hooks
  (``io_errors.install_quiet_hooks``) first, and turns a ``UserError`` from
  ``main`` into one ``error: <message>`` line on stderr with the error's exit
  status (1; 2 for a ``FlagError``): no traceback.
  """
  def guarded(argv: list[str]) -> None:
    io_errors.install_quiet_hooks()
    try:
      main(argv)
    except errors.UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(e.exit_code)
  app.run(guarded, flags_parser=parse_flags)
