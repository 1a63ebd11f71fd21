"""Command-line parsing with one-line errors.

absl parses the flags (and ml_collections loads `--config` and applies its
`--config.a.b=v` overrides) before `main` runs; left alone, an unknown field,
a missing config file or a value of the wrong type ends in a page of
traceback or usage. `parse` does the same parsing and turns each of these
into one `config.ConfigError` that names the flag, the value and what is
allowed; `engine.logs.run_app` prints it as `error: ...` with status 2.
Nothing is written or compiled before.
"""

import difflib
import os
import re
from typing import Iterator, List, Optional, Sequence, Tuple

from absl import flags
import ml_collections

from simclr_jax import config as config_lib

# Names other codebases give to a field, and this config's name for it.
_ALIASES = {"learning_rate": "base_lr", "lr": "base_lr",
            "batch_size": "global_batch", "batch": "global_batch",
            "num_epochs": "epochs", "num_steps": "steps",
            "total_steps": "steps", "max_steps": "steps",
            "train_steps": "steps", "temp": "temperature",
            "tau": "temperature", "wd": "weight_decay",
            "resnet_depth": "depth", "width_multiplier": "width",
            "warmup_steps": "warmup_epochs"}
# What a parser's flag_type() is called in an error line.
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "True or "
               "False", "str": "a string", "string": "a string",
               "tuple": "a tuple such as (1, 2)", "list": "a list such as "
               "[1, 2]"}


def _config_flags(flag_values: flags.FlagValues) -> List[str]:
  """Names of the flags that load a config file (`--config`)."""
  names = []
  for name in flag_values:
    parser = getattr(flag_values[name], "parser", None)
    if parser is not None and parser.flag_type() == "config object":
      names.append(name)
  return sorted(set(names))


def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  """The last value given to --name (as --name=v or --name v), else None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    match = re.fullmatch(r"--?%s(=(.*))?" % re.escape(name), arg,
                         flags=re.DOTALL)
    if match:
      if match.group(1) is not None:
        value = match.group(2)
      elif i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _overrides(argv: Sequence[str], name: str
               ) -> Iterator[Tuple[str, Optional[str]]]:
  """(field path, value or None) of each --name.a.b[=v] / --noname.a.b."""
  for arg in argv[1:]:
    match = re.fullmatch(r"--?(?:no)?%s\.([^=]+)(?:=(.*))?" % re.escape(name),
                         arg, flags=re.DOTALL)
    if match:
      yield match.group(1), match.group(2)


def _fields(config, prefix: str = "") -> Iterator[str]:
  """Dotted paths of every leaf field of a ConfigDict."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _fields(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def closest_field(path: str, fields: Sequence[str]) -> Optional[str]:
  """The existing field most likely meant by the unknown `path`, or None.

  A known synonym first (`learning_rate` -> `base_lr`), preferring the same
  section; then the most similar dotted path; then the most similar leaf
  name in the same section.
  """
  section, _, leaf = path.rpartition(".")
  split = [(f, f.rpartition(".")[0], f.rpartition(".")[2]) for f in fields]
  alias = _ALIASES.get(leaf)
  if alias:
    same = [f for f, s, l in split if l == alias and s == section]
    anywhere = [f for f, _, l in split if l == alias]
    if same or anywhere:
      return (same or anywhere)[0]
  match = difflib.get_close_matches(path, fields, n=1, cutoff=0.6)
  if match:
    return match[0]
  leaves = {l: f for f, s, l in split if s == section}
  match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.5)
  return leaves[match[0]] if match else None


def _lookup(config, path: str):
  """The value at dotted `path` of `config`; KeyError when there is none."""
  node = config
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node


def _last_line(exc: BaseException) -> str:
  """The message of an exception, or of the one a traceback text ends in."""
  lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
  line = lines[-1] if lines else type(exc).__name__
  return re.sub(r"^\w+(Error|Exception): ", "", line)


def _load_config(flag_values: flags.FlagValues, name: str, value: str):
  """Loads `--name=value` as the flag would; ConfigError if it cannot."""
  path, _, variant = value.partition(":")
  if not os.path.isfile(path):
    config_lib.fail(f"--{name}", value, f"no such config file {path!r}")
  try:
    return flag_values[name].parser.parse(value)
  except Exception as e:  # pylint: disable=broad-except
    message = _last_line(e)
    if "get_config() takes 0 positional arguments" in message:
      message = f"{path} has no variants; drop ':{variant}'"
    elif message.startswith(f"{path}: "):
      message = message[len(path) + 2:]
    config_lib.fail(f"--{name}", value, message)


def _check_configs(argv: Sequence[str], flag_values: flags.FlagValues
                   ) -> None:
  """Config files, variants and override fields; raises ConfigError."""
  for name in _config_flags(flag_values):
    value = _flag_value(argv, name)
    if value is None:
      continue  # absl names a missing required flag
    config = _load_config(flag_values, name, value)
    if not isinstance(config, ml_collections.ConfigDict):
      continue
    fields = list(_fields(config))
    for path, _ in _overrides(argv, name):
      if "[" in path:
        continue  # an indexed override: ml_collections checks it
      try:
        _lookup(config, path)
      except KeyError:
        near = closest_field(path, fields)
        hint = f"; did you mean --{name}.{near}?" if near else ""
        if path in config_lib.REPLACED_FIELDS:
          hint = (f"; replaced by --{name}.eval.evaluators (name "
                  f"{config_lib.REPLACED_FIELDS[path]} there)")
        raise config_lib.ConfigError(  # pylint: disable=raise-missing-from
            f"--{name}.{path}: no such field{hint}")


def _override_type(argv: Sequence[str], flag_values: flags.FlagValues,
                   name: str) -> Optional[str]:
  """What the config field behind the override flag `name` holds, or None."""
  for config_name in _config_flags(flag_values):
    if name.startswith(config_name + "."):
      config = _load_config(flag_values, config_name,
                            _flag_value(argv, config_name))
      section, _, leaf = name[len(config_name) + 1:].rpartition(".")
      try:
        holder = _lookup(config, section) if section else config
        current = holder[leaf]
        field_type = holder.get_type(leaf)  # a placeholder's too
      except (KeyError, AttributeError, TypeError):
        return None
      kind = _TYPE_NAMES.get(field_type.__name__, field_type.__name__)
      return f"{kind} is required (the config has {current!r})"
  return None


def _explain(error: Exception, argv: Sequence[str],
             flag_values: flags.FlagValues) -> str:
  """One line for an error absl or ml_collections raised while parsing."""
  message = " ".join(str(error).split())
  bad_value = re.match(r"flag --([^=\s]+)=", message)
  if bad_value:
    name = bad_value.group(1)
    required = re.search(r"Flag --(\S+) must have a value other than None",
                         message)
    if required:
      return f"--{required.group(1)} is required (see --helpshort)"
    given = _flag_value(argv, name)
    detail = message[bad_value.end():].split(": ", 1)[-1]
    # An override's value: name the type the config field holds.
    expected = _override_type(argv, flag_values, name)
    if expected:
      detail = expected
    elif name in flag_values:
      flag_type = flag_values[name].parser.flag_type()
      kind = _TYPE_NAMES.get(flag_type)
      if kind and re.search(r"invalid literal|could not convert|Expect",
                            detail, re.IGNORECASE):
        detail = f"{kind} is required"
    return f"--{name}={given!r} is invalid: {detail}"
  if isinstance(error, flags.UnrecognizedFlagError):
    near = difflib.get_close_matches(error.flagname, list(flag_values), n=1,
                                     cutoff=0.6)
    hint = f"did you mean --{near[0]}?" if near else "see --helpshort"
    return f"--{error.flagname}: no such flag; {hint}"
  return message


def parse(argv: Sequence[str],
          flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """Parses `argv` into `flag_values`; returns the arguments left over.

  Args:
    argv: the command line, program name first.
    flag_values: the flags to fill.

  Returns:
    The program name and the positional arguments.

  Raises:
    config.ConfigError: one line naming the flag and what is wrong with it.
  """
  argv = list(argv)
  # ml_collections defers a missing file's error to the config's first use.
  for name in _config_flags(flag_values):
    value = _flag_value(argv, name)
    if value is not None and not os.path.isfile(value.partition(":")[0]):
      config_lib.fail(f"--{name}", value,
                      f"no such config file {value.partition(':')[0]!r}")
  try:
    return flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections raises AttributeError/KeyError for an unknown field and
    # wraps a failing get_config in a traceback text: name the culprit.
    _check_configs(argv, flag_values)
    raise config_lib.ConfigError(_explain(e, argv, flag_values)) from e
