"""Multi-host runs on one machine: 2 processes x 2 CPU devices via jax.distributed.

The reference is a single process with a 4-device mesh (this pytest process),
fed the same global batches. Child processes are started through
launch/local.sh in their own process group, with a time limit, and the whole
group is killed when a test ends, whatever happened.
"""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import multihost_worker
from simclr_jax import data as data_lib
from simclr_jax import distributed
from simclr_jax import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local.sh")
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")
TIMEOUT_S = 420  # one multi-process launch on a loaded 2-core machine
STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(cmd, logdir, n=2, devices=2, timeout_s=TIMEOUT_S):
  """Runs `cmd` as n processes through launch/local.sh; returns (rc, output)."""
  os.makedirs(logdir, exist_ok=True)
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""  # local.sh adds the per-process device count
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["PYTHON"] = sys.executable
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  out_path = os.path.join(logdir, "launcher.log")
  with open(out_path, "w") as out:
    proc = subprocess.Popen(
        ["bash", LAUNCH, "-n", str(n), "-d", str(devices), "-p",
         str(_free_port()), "-l", logdir, "-t", str(timeout_s), "--", *cmd],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
      rc = proc.wait(timeout=timeout_s + 30)
    finally:
      # The launcher and every process it started share this group.
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      proc.wait()
  with open(out_path) as f:
    return rc, f.read()


def _load(out_dir, i):
  with open(os.path.join(out_dir, f"process_{i}.json")) as f:
    meta = json.load(f)
  return meta, dict(np.load(os.path.join(out_dir, f"process_{i}.npz")))


def _params(arrays, prefix):
  return {k[len(prefix):]: v for k, v in arrays.items()
          if k.startswith(prefix)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Single-process run (A), 2-process run (B), single-process restore (C)."""
  root = tmp_path_factory.mktemp("multihost")
  mesh4 = parallel.make_mesh(jax.devices()[:4])
  # A: 1 process x 4 devices trains and checkpoints.
  multihost_worker.run(str(root / "a"), str(root / "ckpt_a"), "", STEPS,
                       mesh=mesh4)
  # B: 2 processes x 2 devices train, checkpoint, and restore A's checkpoint.
  rc, log = _launch([sys.executable, WORKER, f"--out={root / 'b'}",
                     f"--ckpt={root / 'ckpt_b'}",
                     f"--restore={root / 'ckpt_a'}", f"--steps={STEPS}"],
                    str(root / "b_logs"))
  assert rc == 0, log[-6000:]
  # C: 1 process restores B's checkpoint.
  multihost_worker.run(str(root / "c"), "", str(root / "ckpt_b"), 0,
                       mesh=mesh4)
  out = {name: [_load(root / name, i) for i in range(n)]
         for name, n in (("a", 1), ("b", 2), ("c", 1))}
  out["root"], out["b_log"] = root, log
  return out


def _assert_same_state(arrays, arrays_ref):
  """Parameters and BatchNorm statistics agree to rtol 1e-5 (see below)."""
  for prefix in ("params/", "stats/"):
    ref, got = _params(arrays_ref, prefix), _params(arrays, prefix)
    assert ref and got.keys() == ref.keys()
    flat_ref = np.concatenate([v.ravel() for v in ref.values()]).astype(
        np.float64)
    flat_got = np.concatenate([got[k].ravel() for k in ref]).astype(np.float64)
    # The whole state, as one vector, to rtol 1e-5.
    assert (np.linalg.norm(flat_got - flat_ref) <=
            1e-5 * np.linalg.norm(flat_ref)), prefix
    for k, v in ref.items():
      # Every tensor to 1e-4 of its own norm: gloo's ring all-reduce sums in
      # another order than XLA's in-process one, and the bn1 parameters behind
      # a zero-initialised bn2 scale get gradients formed by cancellation,
      # which turns those last-bit differences into ~2e-5 of the tensor.
      # A real bug (a missing pmean, wrong rows) is orders of magnitude larger.
      assert (np.linalg.norm(got[k] - v) <=
              1e-4 * max(np.linalg.norm(v), 1e-12)), prefix + k


def test_two_processes_match_one_process(runs):
  (meta_a, arrays_a), = runs["a"]
  assert meta_a["process_count"] == 1 and meta_a["devices"] == 4
  losses_a = np.array(meta_a["losses"])
  assert len(losses_a) == STEPS and len(set(losses_a.tolist())) == STEPS
  for i, (meta, arrays) in enumerate(runs["b"]):
    assert (meta["process_index"], meta["process_count"]) == (i, 2)
    assert meta["devices"] == 4
    np.testing.assert_allclose(meta["losses"], losses_a, rtol=1e-5)
    _assert_same_state(arrays, arrays_a)
    # Exact evaluation: every test digit counted once over both processes,
    # and the same accuracy as on one process.
    assert meta["probe"]["num_examples"] == 360
    for key in ("top1", "top5"):  # last-bit noise may flip a near tie
      assert abs(meta["probe"][key] - meta_a["probe"][key]) <= 1.001 / 360


def test_process_zero_alone_writes_events_and_info_logs(runs):
  events = glob.glob(str(runs["root"] / "b" / "tb" / "events.out.tfevents*"))
  assert len(events) == 1
  info_line = re.compile(r"^I\d{4} .*\.py:\d+\]", re.M)
  assert info_line.search(runs["b_log"])  # process 0, on the launcher's output
  with open(runs["root"] / "b_logs" / "process_1.log") as f:
    log1 = f.read()
  # Once process 1 knows it is not process 0, it logs warnings only.
  started = log1.index("jax.distributed initialised: process 1 of 2")
  assert not info_line.search(log1[started:].split("\n", 1)[1]), log1[-3000:]


def test_checkpoints_restore_across_topologies(runs):
  (_, arrays_a), = runs["a"]
  params_a = _params(arrays_a, "params/")
  # 1-process checkpoint restored by both processes of a 2-process run.
  for meta, arrays in runs["b"]:
    assert meta["restored_step"] == STEPS
    restored = _params(arrays, "restored/")
    assert restored.keys() == params_a.keys()
    for k, v in params_a.items():
      np.testing.assert_array_equal(restored[k], v, err_msg=k)
  # 2-process checkpoint restored by a 1-process run.
  (meta_c, arrays_c), = runs["c"]
  assert meta_c["restored_step"] == STEPS
  params_b = _params(runs["b"][0][1], "params/")
  restored = _params(arrays_c, "restored/")
  assert restored.keys() == params_b.keys()
  for k, v in params_b.items():
    np.testing.assert_array_equal(restored[k], v, err_msg=k)


def test_processes_read_disjoint_shards(runs):
  config = multihost_worker.tiny_config()
  info = data_lib.dataset_info(config.data)
  procs = [arrays for _, arrays in runs["b"]]
  for split in ("train", "test"):
    ids = [a[f"ids/{split}"] for a in procs]
    assert not set(ids[0].tolist()) & set(ids[1].tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)),
                                  np.arange(info.num_examples[split]))
  # Valid eval rows of both processes = the whole split, each row once.
  (_, arrays_a), = runs["a"]
  ref = arrays_a["eval_images"]
  assert len(ref) == info.num_examples["test"] == 360
  both = np.concatenate([a["eval_images"] for a in procs])

  def canonical(x):
    return x[np.lexsort(x.reshape(len(x), -1).T)]
  np.testing.assert_array_equal(canonical(both), canonical(ref))
  assert runs["b"][0][0]["eval_batches"] == runs["b"][1][0]["eval_batches"]
  # Each process augments its own shard with its own seeds, as the pipeline
  # would for an explicitly given process index.
  for i, arrays in enumerate(procs):
    expected = next(data_lib.make_pretrain_iterator(
        config.data, config.aug, config.train.global_batch, config.seed,
        process_index=i, process_count=2))["images"]
    np.testing.assert_array_equal(arrays["first_batch"], expected)
  assert not np.allclose(procs[0]["first_batch"], procs[1]["first_batch"])


def test_to_host_refuses_arrays_split_over_processes(runs):
  for meta, _ in runs["b"]:
    assert "split over processes" in meta["to_host_error"]
    assert "process_allgather" in meta["to_host_error"]


def test_processes_that_disagree_on_the_config_all_fail(runs):
  for i, (meta, _) in enumerate(runs["b"]):
    message = meta["mismatch_error"]
    assert "loss.temperature" in message, message
    assert "processes [1] differ" in message
    assert f"loss.temperature={0.2 * (1 + i)!r}" in message


def test_launcher_stops_all_processes_when_one_fails(tmp_path):
  # Process 0 records its pid and sleeps for 10 minutes; process 1 fails as
  # soon as process 0 is up.
  pid_file = str(tmp_path / "pid0")
  script = ("import os, sys, time\n"
            "pid = int([a for a in sys.argv if a.startswith('--process_id=')]"
            "[0].split('=')[1])\n"
            "if pid:\n"
            f"  while not os.path.exists({pid_file!r}): time.sleep(0.1)\n"
            "  sys.exit(3)\n"
            f"open({pid_file + '.tmp'!r}, 'w').write(str(os.getpid()))\n"
            f"os.rename({pid_file + '.tmp'!r}, {pid_file!r})\n"
            "time.sleep(600)\n")
  start = time.time()
  rc, _ = _launch([sys.executable, "-c", script], str(tmp_path / "logs"),
                  timeout_s=120)
  assert rc == 3
  assert time.time() - start < 60
  with open(tmp_path / "pid0") as f:
    pid0 = int(f.read())
  with pytest.raises(ProcessLookupError):
    os.kill(pid0, 0)


def test_launcher_time_limit(tmp_path):
  start = time.time()
  rc, _ = _launch([sys.executable, "-c", "import time; time.sleep(600)"],
                  str(tmp_path / "logs"), timeout_s=3)
  assert rc == 124
  assert time.time() - start < 60


@pytest.mark.quick
def test_initialize_rejects_bad_settings():
  with pytest.raises(ValueError, match="--distributed=off"):
    distributed.initialize(num_processes=2, process_id=0, mode="off")
  with pytest.raises(ValueError, match="--process_id=2 is invalid"):
    distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
  with pytest.raises(ValueError, match="--num_processes=0 is invalid"):
    distributed.initialize("127.0.0.1:1234", num_processes=0, process_id=0)
  with pytest.raises(ValueError, match="mode 'on' is invalid"):
    distributed.initialize(mode="on")
  assert distributed.initialize(mode="off") is False


@pytest.mark.quick
def test_fingerprint_names_exactly_the_changed_field():
  config = multihost_worker.tiny_config()
  base = distributed.fingerprint(config, {"workdir": "w"})
  other = config.copy_and_resolve_references()
  other.optim.base_lr = 2.0
  changed = distributed.fingerprint(other, {"workdir": "w"})
  assert base.keys() == changed.keys()
  assert [k for k in base if base[k] != changed[k]] == ["optim.base_lr"]
  moved = distributed.fingerprint(config, {"workdir": "elsewhere"})
  assert [k for k in base if base[k] != moved[k]] == ["<workdir>"]
  assert all(0 <= v < 2**31 for v in base.values())


@pytest.mark.quick
def test_bad_timeouts_are_named():
  config = multihost_worker.tiny_config()
  config.distributed.heartbeat_timeout_s = 0
  with pytest.raises(ValueError,
                     match=r"config.distributed.heartbeat_timeout_s=0"):
    distributed.initialize_from_flags(config)


@pytest.mark.quick
def test_slurm_environment_is_detected_without_flags(tmp_path):
  # Two processes that see only SLURM's variables, as `srun -n 2` sets them.
  script = ("import sys\n"
            f"sys.path.insert(0, {REPO!r})\n"
            "from simclr_jax import distributed\n"
            "started = distributed.initialize()\n"
            "import jax, numpy as np\n"
            "from jax.experimental import multihost_utils\n"
            "ids = multihost_utils.process_allgather("
            "np.array([jax.process_index()], np.int32))\n"
            "print('RESULT', started, jax.process_count(), "
            "sorted(ids.ravel().tolist()))\n")
  port = _free_port()
  procs = []
  try:
    for i in range(2):
      env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
                 SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost",
                 SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID="0",
                 JAX_COORDINATOR_PORT=str(port))
      procs.append(subprocess.Popen(
          [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True, start_new_session=True))
    outputs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
    assert "RESULT True 2 [0, 1]" in out, out[-3000:]
