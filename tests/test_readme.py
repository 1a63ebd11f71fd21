"""Every command in the README's shell blocks exists as written.

Each command of each ```bash block is parsed dry: its module imports, its
config file exists and `get_config(variant)` runs, every `--config.a.b=`
names a field of that config, and every other `--flag` is one the command
defines (the tools define their flags when their command line starts, so a
subprocess starts each one with absl's runner replaced by a no-op and lists
its flags). The own-images quick start then runs for real in its tiny
variant: the stand-in folder, a pretraining of a few steps, the export.
"""

import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
# External programs the README shows but this repository does not own.
EXTERNAL = {"gsutil", "tensorboard"}

# Lists the flags of each `python -m MODULE` command without running it.
_FLAG_LISTER = """
import json, runpy, sys
from absl import app, flags, logging  # their flags are every command's
from simclr_jax.engine import logs
logs.run_app = lambda main: None
base = set(flags.FLAGS)
out = {}
for module in sys.argv[2:]:
  runpy.run_module(module, run_name="__main__", alter_sys=False)
  names = set(flags.FLAGS) - base
  out[module] = sorted(names | base)
  for name in names:
    delattr(flags.FLAGS, name)
with open(sys.argv[1], "w") as f:  # the commands may redirect stdout
  json.dump(out, f)
"""


def _blocks():
  """The README's ```bash blocks, as text."""
  with open(README) as f:
    text = f.read()
  return re.findall(r"```bash\n(.*?)```", text, re.S)


def _commands():
  """Every command of the shell blocks: ({VAR: value} prefix, tokens)."""
  commands = []
  for block in _blocks():
    block = block.replace("\\\n", " ")
    for line in block.splitlines():
      tokens = shlex.split(line, comments=True)
      while tokens:
        if "&&" in tokens:
          cut = tokens.index("&&")
          part, tokens = tokens[:cut], tokens[cut + 1:]
        else:
          part, tokens = tokens, []
        env = {}
        while part and re.match(r"^[A-Z_]+=", part[0]):
          name, _, value = part.pop(0).partition("=")
          env[name] = value
        if part:
          commands.append((env, part))
  return commands


def _python_calls(tokens):
  """(module or script, args) of the Python program a command runs, or None.

  Launchers are looked through: `launch/local.sh ... -- python -m M ...`,
  `launch/tpu_pod.sh run ARGS` and `sbatch ... launch/slurm_gpu.sbatch ARGS`
  run `python -m simclr_jax.main ARGS`.
  """
  prog = os.path.basename(tokens[0])
  if prog in ("python", "python3") or prog.startswith("python"):
    if tokens[1] == "-m":
      return tokens[2], tokens[3:]
    return tokens[1], tokens[2:]
  if tokens[0] in ("bash", "sh"):
    return _python_calls(tokens[1:])
  if tokens[0] == "launch/local.sh":
    return _python_calls(tokens[tokens.index("--") + 1:])
  if tokens[0] == "launch/tpu_pod.sh":
    assert tokens[1] in ("create", "setup", "run", "delete", "all"), tokens
    return "simclr_jax.main", tokens[2:]
  if tokens[0] == "sbatch":
    script = next(t for t in tokens if t.endswith(".sbatch"))
    assert os.path.isfile(os.path.join(REPO, script)), script
    return "simclr_jax.main", tokens[tokens.index(script) + 1:]
  return None


def _flags(args):
  """{name: value} of the --name=value arguments."""
  out = {}
  for arg in args:
    if arg.startswith("--"):
      name, _, value = arg[2:].partition("=")
      out[name] = value
  return out


def _load_config(spec):
  """get_config(variant) of configs/NAME.py[:variant]."""
  path, _, variant = spec.partition(":")
  assert os.path.isfile(os.path.join(REPO, path)), path
  module = importlib.import_module(path[:-len(".py")].replace("/", "."))
  return module.get_config(variant) if variant else module.get_config()


def _has_field(config, dotted):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return False
    node = node[part]
  return True


@pytest.fixture(scope="module")
def module_flags(tmp_path_factory):
  """{module: [flag names]} of every `python -m` module the README runs."""
  modules = sorted({call[0] for call in (_python_calls(tokens)
                                          for _, tokens in _commands())
                    if call and call[0].startswith("simclr_jax.")})
  out = str(tmp_path_factory.mktemp("flags") / "flags.json")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", _FLAG_LISTER, out, *modules],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    return json.load(f)


@pytest.mark.quick
def test_the_two_commands_are_unchanged():
  first = _blocks()[0]
  assert (".venv/bin/python -m simclr_jax.main --config=configs/digits.py "
          "--workdir=runs/digits\n") in first
  # CI runs exactly this line (.ci/run).
  assert ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
          ".venv/bin/python -m pytest -q tests\n") in first


@pytest.mark.quick
def test_readme_is_short_and_links_exist():
  with open(README) as f:
    text = f.read()
  assert len(text.splitlines()) <= 250
  for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
    if not link.startswith("http"):
      assert os.path.exists(os.path.join(REPO, link)), link


def test_every_command_parses(module_flags):
  with open(os.path.join(REPO, "setup.py")) as f:
    setup = f.read()
  checked = 0
  for env, tokens in _commands():
    if tokens[0] in EXTERNAL or tokens[:3] == ["python3", "-m", "venv"]:
      continue
    if os.path.basename(tokens[0]) == "pip":
      for extra in re.findall(r"\.\[(\w+)\]", " ".join(tokens)):
        assert f'"{extra}":' in setup, (extra, tokens)
      continue
    if tokens[0].startswith("launch/") or tokens[:1] == ["bash"]:
      script = tokens[1] if tokens[0] == "bash" else tokens[0]
      assert os.path.isfile(os.path.join(REPO, script)), script
    call = _python_calls(tokens)
    assert call is not None, f"no check knows this command: {tokens}"
    target, args = call
    if target == "pytest":
      assert os.path.isdir(os.path.join(REPO, args[-1]))
      continue
    if target.endswith(".py"):  # a script: it exists and takes a path
      assert os.path.isfile(os.path.join(REPO, target)), target
      continue
    assert importlib.util.find_spec(target) is not None, target
    flags = _flags(args)
    if tokens[0] == "sbatch":  # launch/slurm_gpu.sbatch reads $CONFIG
      flags.setdefault("config", env["CONFIG"])
    defined = set(module_flags[target])
    config = _load_config(flags["config"]) if "config" in flags else None
    for name in flags:
      if name.startswith("config."):
        assert config is not None, (name, tokens)
        assert _has_field(config, name[len("config."):]), (name, tokens)
      else:
        assert name in defined, (f"--{name} is not a flag of {target}",
                                 tokens)
    checked += 1
  assert checked >= 12


def test_own_images_quick_start_runs_tiny(tmp_path):
  """The own-images block as written, with :tiny for :cpu and 2 steps."""
  block = next(b for b in _blocks() if "launch/digits_images.py" in b)
  cmds = [c for c in (shlex.split(l, comments=True)
                      for l in block.splitlines()) if c]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""),
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  runs = str(tmp_path)
  for tokens in cmds[:3]:  # the folder, pretraining, export
    tokens = [t.replace("runs/", runs + "/") for t in tokens]
    tokens = [t.replace("configs/folder.py:cpu", "configs/folder.py:tiny")
              for t in tokens]
    if "simclr_jax.main" in tokens:
      tokens += ["--config.train.steps=2", "--config.eval.evaluators=('classifier','knn')",
                 "--config.eval.signal_max_images=32"]
    proc = subprocess.run([sys.executable] + tokens[1:], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (tokens, proc.stdout[-2000:] +
                                  proc.stderr[-3000:])
  with open(os.path.join(runs, "mine", "export", "meta.json")) as f:
    meta = json.load(f)
  assert meta["extra"]["step"] == 2
