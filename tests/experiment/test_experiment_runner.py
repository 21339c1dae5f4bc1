"""The driver: causal planning, one runner per directory, safe names, parallel workers."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurostep.experiment import RunDirLocked, RunLock, load_config, parse_config, plan_runs, run_experiment, runner
from neurostep.experiment.results import ResultStore
from neurostep.experiment.runner import parallel_order, read_plan

ROOT = Path(__file__).resolve().parents[2]


def test_causal_task_skips_blocks_without_a_causal_form():
    cfg = parse_config({"experiment": {"blocks": ["softmax_attention", "vim", "mamba"], "tasks": ["mqar", "digits"],
                                       "seeds": [0, 1]}}, name="t")
    runs, skipped = plan_runs(cfg)
    assert [(s.block, s.task) for s in skipped] == [("vim", "mqar")]
    assert "no causal form" in skipped[0].reason
    assert {(r.block, r.task) for r in runs} == {("softmax_attention", "mqar"), ("mamba", "mqar"),
                                                 ("softmax_attention", "digits"), ("vim", "digits"),
                                                 ("mamba", "digits")}
    cfg = parse_config({"experiment": {"blocks": ["vim"], "tasks": ["mqar"]},
                        "tasks": {"mqar": {"causal": False}}}, name="t")
    assert len(plan_runs(cfg)[0]) == 3 and not plan_runs(cfg)[1]     # asked for explicitly; 3 seeds by default


def test_per_task_blocks_and_overrides():
    cfg = parse_config({"experiment": {"blocks": ["softmax_attention"], "tasks": ["digits", "sc"]},
                        "train": {"steps": 50},
                        "tasks": {"sc": {"task": "selective_copy", "blocks": ["mamba"], "train": {"steps": 7},
                                         "backbone": {"dim": 8}}}}, name="t")
    assert cfg.blocks_for("sc") == ["mamba"] and cfg.blocks_for("digits") == ["softmax_attention"]
    assert cfg.train_for("sc")["steps"] == 7 and cfg.train_for("digits")["steps"] == 50
    assert cfg.backbone_for("sc")["dim"] == 8 and cfg.train_for("sc")["lr"] == cfg.train["lr"]
    assert cfg.run_config("mamba", "sc")["train"]["steps"] == 7
    with pytest.raises(ValueError, match=r"unknown key 'stepz' in \[tasks.sc.train\]"):
        parse_config({"experiment": {"blocks": ["a"], "tasks": ["sc"]},
                      "tasks": {"sc": {"task": "selective_copy", "train": {"stepz": 1}}}}, name="t")


def test_per_task_block_options_override_the_blocks_table_for_that_task_only(make_toml):
    extra = """
    [tasks.digits_plain]
    task = "digits"
    block_options = { softmax_attention = { qkv_bias = false } }

    [blocks.softmax_attention]
    head_dim = 4
    """
    path = make_toml(extra=extra)
    path.write_text(path.read_text().replace('tasks = ["digits"]', 'tasks = ["digits", "digits_plain"]'))
    cfg = load_config(path)
    assert cfg.block_options_for("softmax_attention", "digits") == {"head_dim": 4}
    assert cfg.block_options_for("softmax_attention", "digits_plain") == {"head_dim": 4, "qkv_bias": False}
    assert cfg.config_hash("softmax_attention", "digits") != cfg.config_hash("softmax_attention", "digits_plain")
    run_dir = run_experiment(cfg, log=lambda s: None, report=False)
    records = {r["task"]: r for r in ResultStore(run_dir).load()}
    assert records["digits_plain"]["config"]["block_options"] == {"head_dim": 4, "qkv_bias": False}
    # the runs built what their configurations say: without the q, k and v biases (2 heads of 4 channels)
    assert records["digits"]["params"] - records["digits_plain"]["params"] == 3 * 2 * 4
    for bad, error, match in (({"mamba": {"d_state": 4}}, ValueError, "does not run"),
                              ({"softmax_attention": 4}, TypeError, "tables of options")):
        with pytest.raises(error, match=match):
            parse_config({"experiment": {"blocks": ["softmax_attention"], "tasks": ["digits"]},
                          "tasks": {"digits": {"block_options": bad}}}, name="t")


def test_per_task_seeds():
    cfg = parse_config({"experiment": {"blocks": ["mamba"], "tasks": ["digits", "sc"], "seeds": [0, 1]},
                        "tasks": {"sc": {"task": "selective_copy", "seeds": [0, 1, 2, 3, 4]}}}, name="t")
    assert cfg.seeds_for("sc") == [0, 1, 2, 3, 4] and cfg.seeds_for("digits") == [0, 1]
    runs, _ = plan_runs(cfg)
    assert sorted(r.seed for r in runs if r.task == "sc") == [0, 1, 2, 3, 4]
    assert sorted(r.seed for r in runs if r.task == "digits") == [0, 1]
    # a task's seeds do not enter its configuration hash: the shared seeds' results stay comparable
    plain = parse_config({"experiment": {"blocks": ["mamba"], "tasks": ["sc"], "seeds": [0, 1]},
                          "tasks": {"sc": {"task": "selective_copy"}}}, name="t")
    assert plain.config_hash("mamba", "sc") == cfg.config_hash("mamba", "sc")
    order = [run for _, run in parallel_order(cfg, list(enumerate(runs)))]
    assert sorted(order, key=id) == sorted(runs, key=id)
    for bad, match in (([1, 1], "distinct"), ([], "non-empty"), ([0.5], "ints"), ("0", "list"),
                       ({"mamba": [2, 2]}, "distinct"), ({"vim": [0]}, "does not run")):
        with pytest.raises(ValueError, match=match):
            parse_config({"experiment": {"blocks": ["mamba"], "tasks": ["sc"]},
                          "tasks": {"sc": {"task": "selective_copy", "seeds": bad}}}, name="t")


def test_seeds_for_some_blocks_of_a_task():
    cfg = parse_config({"experiment": {"blocks": ["mamba", "mamba_lti"], "tasks": ["digits", "sc"], "seeds": [0, 1]},
                        "tasks": {"sc": {"task": "selective_copy", "seeds": {"mamba": [0, 1, 2, 3]}}}}, name="t")
    assert cfg.seeds_for("sc", "mamba") == [0, 1, 2, 3] and cfg.seeds_for("sc", "mamba_lti") == [0, 1]
    assert cfg.seeds_for("digits", "mamba") == [0, 1]
    runs, _ = plan_runs(cfg)
    assert sorted((r.task, r.block, r.seed) for r in runs) == sorted(
        [("sc", "mamba", s) for s in range(4)] + [("sc", "mamba_lti", 0), ("sc", "mamba_lti", 1)]
        + [("digits", b, s) for b in ("mamba", "mamba_lti") for s in (0, 1)])
    order = [run for _, run in parallel_order(cfg, list(enumerate(runs)))]
    assert sorted(order, key=id) == sorted(runs, key=id)


def test_parallel_workers_start_different_blocks_and_long_runs_first():
    cfg = parse_config({"experiment": {"blocks": ["mamba", "mamba_lti", "softmax_attention"],
                                       "tasks": ["digits", "sc"], "seeds": [3, 1, 2]},
                        "tasks": {"sc": {"task": "selective_copy", "train": {"steps": 2000}}}}, name="t")
    runs, _ = plan_runs(cfg)
    order = [run for _, run in parallel_order(cfg, list(enumerate(runs)))]
    assert [(r.task, r.block, r.seed) for r in order[:4]] == [
        ("sc", "mamba", 3), ("sc", "mamba_lti", 3), ("sc", "softmax_attention", 3), ("sc", "mamba", 1)]
    assert {r.task for r in order[:9]} == {"sc"} and sorted(order, key=id) == sorted(runs, key=id)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "x y"])
def test_names_cannot_leave_the_output_dir(name):
    with pytest.raises(ValueError, match="plain"):
        parse_config({"experiment": {"name": name, "blocks": ["a"], "tasks": ["digits"]}}, name="t")
    with pytest.raises(ValueError, match="plain"):
        parse_config({"experiment": {"blocks": ["a"], "tasks": [name]}, "tasks": {name: {"task": "digits"}}},
                     name="t")


def test_repeated_seeds_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        parse_config({"experiment": {"blocks": ["a"], "tasks": ["digits"], "seeds": [0, 0]}}, name="t")


def test_lock_refuses_a_second_runner_and_dies_with_its_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirLocked, match=f"another neurostep run is writing to {tmp_path}.*pid"):
            RunLock(tmp_path).acquire()
    again = RunLock(tmp_path)      # released on exit
    again.acquire()
    again.release()
    # A holder killed with SIGKILL leaves no stale lock behind.
    code = f"from neurostep.experiment.lock import RunLock; lock = RunLock({str(tmp_path / 'k')!r}); " \
           "lock.acquire(); print('locked', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked):
            RunLock(tmp_path / "k").acquire()
        proc.kill()
        proc.wait(10)
        lock = RunLock(tmp_path / "k")
        lock.acquire()
        lock.release()
    finally:
        proc.kill()


def test_second_runner_on_the_same_dir_gets_a_clear_error(make_toml):
    toml = make_toml(name="busy")
    cfg = load_config(toml)
    with RunLock(cfg.run_dir):
        out = subprocess.run([sys.executable, "-m", "neurostep", "run", str(toml), "--no-progress"], cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "another neurostep run is writing to" in out.stderr
    assert not ResultStore(cfg.run_dir).load()


def test_changed_config_reruns_as_a_separate_configuration(make_toml):
    cfg = load_config(make_toml(name="twice"))
    run_experiment(cfg, log=lambda s: None)
    cfg2 = load_config(make_toml(name="twice", steps=6))
    run_dir = run_experiment(cfg2, log=lambda s: None)
    records = ResultStore(run_dir).load()
    assert len(records) == 2 and len({r["config_hash"] for r in records}) == 2
    text = (run_dir / "report.md").read_text()
    assert "[config" in text and "current]" in text and "other]" in text


def test_two_workers_train_side_by_side(make_toml, monkeypatch):
    cfg = load_config(make_toml(name="par", seeds="[0, 1]", blocks='["softmax_attention", "crate_mssa"]'))
    cfg.workers = 2
    # the workers start (and import) while the runner traces the models for its warm-up plan
    live_while_planning = []
    plan = runner._warm_up_plan

    def watched_plan(*args):
        live_while_planning.append(len(multiprocessing.active_children()))
        return plan(*args)

    monkeypatch.setattr(runner, "_warm_up_plan", watched_plan)
    start = time.perf_counter()
    run_dir = run_experiment(cfg, log=lambda s: None)
    assert live_while_planning == [2]
    records = ResultStore(run_dir).load()
    assert len(records) == 4 and time.perf_counter() - start < 240
    session = read_plan(run_dir)["session"]
    assert session["trained_runs"] == 4 and session["workers"] == 2 and session["wall_s"] > 0
    assert "The last `neurostep run` trained 4 runs with 2 worker(s)" in (run_dir / "report.md").read_text()
    assert {(r["block"], r["seed"]) for r in records} == {(b, s) for b in ("softmax_attention", "crate_mssa")
                                                          for s in (0, 1)}
    assert (run_dir / "report.md").exists()


def test_a_worker_imports_what_the_first_optimizer_step_would():
    """torch.optim imports torch._dynamo at the first step; the worker's initializer does it, so that the
    import overlaps the runner's planning and no run's training time holds it."""
    code = ("import sys; from neurostep.experiment.runner import _worker_init; _worker_init(1); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def _exited(pid: int) -> bool:
    """The process is gone or a zombie (it has exited; an init that does not reap leaves zombies)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_pool_worker_exits_when_the_runner_is_killed():
    """A runner killed by SIGKILL cannot stop its workers; each must notice and exit on its own."""
    child = ("import os, sys, time\n"
             "from neurostep.experiment.runner import _worker_init\n"
             "_worker_init(1, os.getppid())\n"
             "print('ready', os.getpid(), flush=True)\n"
             "time.sleep(120)\n")
    # The stand-in runner waits on its worker: if the worker fails, the runner exits and the
    # test's readline sees the end of the stream instead of hanging.
    runner = ("import subprocess, sys\n"
              f"sys.exit(subprocess.Popen([sys.executable, '-c', {child!r}]).wait())\n")
    proc = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], line
        worker = int(line[1])
        assert not _exited(worker)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while not _exited(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _exited(worker), "the worker outlived its runner"
    finally:
        proc.kill()
        if worker is not None and not _exited(worker):
            os.kill(worker, signal.SIGKILL)


_REPEAT_SCRIPT = """
import json, sys
import torch
from neurostep.experiment import load_config, plan_runs
from neurostep.experiment.runner import run_one

torch.set_num_threads(2)   # the process's count; the experiment's runs ask for 1
cfg = load_config(sys.argv[1])
run = plan_runs(cfg)[0][0]
first, second = run_one(cfg, run, progress=False), run_one(cfg, run, progress=False)
keys = ("train_loss", "test_loss", "accuracy", "steps", "curve")
print(json.dumps([[first[k] for k in keys], [second[k] for k in keys]]))
"""


def test_a_run_gives_the_same_record_as_a_process_first_run_and_after_another(make_toml):
    # A spiking block (numba kernels and BatchNorm) run twice in one process: the first run starts numba's
    # thread pool, whose start used to set torch's thread count to numba's, so that the first run
    # reduced its BatchNorm statistics over two threads and rounded differently from the second
    toml = make_toml(name="repeat", blocks='["spikformer_ssa"]', steps=6, threads=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", _REPEAT_SCRIPT, str(toml)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert first == second


def test_one_worker_and_two_give_the_same_records(make_toml):
    # [train] threads applies to numba's kernels as to torch's ops in the runner's own process too: the
    # selective scan sums its B and C gradients over one partial sum per thread (4 blocks of channels at
    # width 32), so runs in the parent process rounded differently from the same runs in worker processes
    records = {}
    for workers in (1, 2):
        cfg = load_config(make_toml(name=f"w{workers}", seeds="[0, 1]", blocks='["mamba"]', steps=4, threads=1,
                                    dim=32))
        cfg.workers = workers
        run_dir = run_experiment(cfg, log=lambda s: None, report=False)
        records[workers] = {r["seed"]: (r["train_loss"], r["test_loss"], r["curve"])
                            for r in ResultStore(run_dir).load()}
    assert records[1] == records[2]
