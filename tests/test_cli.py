import subprocess
import sys
from pathlib import Path

import pytest

from neurostep.cli import main
from neurostep.experiment.results import ResultStore

ROOT = Path(__file__).resolve().parents[1]


def _toml(tmp_path, body):
    path = tmp_path / "exp.toml"
    path.write_text(f'[experiment]\nname = "exp"\nout_dir = "{(tmp_path / "runs").as_posix()}"\n' + body)
    return path


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "softmax_attention" in out and "selective_copy" in out and "attention_alternatives.toml" in out


def test_bad_key_and_unknown_block_are_one_line_errors(tmp_path, capsys):
    bad = _toml(tmp_path, 'blocks = ["softmax_attention"]\ntasks = ["digits"]\n[train]\nlearning_rate = 1.0\n')
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate' in [train]; allowed keys:" in err and "'lr'" in err
    unknown = _toml(tmp_path, 'blocks = ["attention_is_all"]\ntasks = ["digits"]\n')
    assert main(["run", str(unknown)]) == 2
    err = capsys.readouterr().err
    assert "unknown block(s) ['attention_is_all']; registered mixers:" in err
    task = _toml(tmp_path, 'blocks = ["softmax_attention"]\ntasks = ["imagenet"]\n')
    assert main(["run", str(task)]) == 2
    assert "unknown task 'imagenet'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "none.toml")]) == 2


def test_report_command(tmp_path, capsys):
    store = ResultStore(tmp_path / "r")
    store.append({"experiment": "r", "block": "a", "task": "digits", "seed": 0, "config_hash": "h",
                  "metric_name": "accuracy", "metric": 0.5, "latency_ms": 1.0})
    assert main(["report", str(tmp_path / "r")]) == 0
    assert "report.md" in capsys.readouterr().out and (tmp_path / "r" / "report.md").exists()


def test_bench_runs_scripts(tmp_path, capsys):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "one.py").write_text("import sys, pathlib\npathlib.Path(sys.argv[0]).with_suffix('.ran')"
                                  ".write_text(' '.join(sys.argv[1:]))\n")
    (bench / "bad.py").write_text("raise SystemExit(3)\n")
    assert main(["bench", "--dir", str(bench), "--quick", "one"]) == 0
    assert (bench / "one.ran").read_text() == "--quick"
    assert main(["bench", "--dir", str(bench)]) == 1
    assert main(["bench", "--dir", str(bench), "nope"]) == 2
    assert "available: ['bad', 'one']" in capsys.readouterr().err


def test_energy_is_delegated(monkeypatch):
    import neurostep.energy

    seen = []
    monkeypatch.setattr(neurostep.energy, "cli_main", lambda argv: seen.append(argv) or 0)
    assert main(["energy", "spikformer_8_384", "--small", "--batch", "2"]) == 0
    assert seen == [["spikformer_8_384", "--small", "--batch", "2"]]


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "neurostep", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "run" in out.stdout and "energy" in out.stdout
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_every_cli_argument_has_help_text():
    import argparse

    from neurostep.cli import build_parser
    from neurostep.energy.cli import build_parser as energy_parser

    def parsers(p: argparse.ArgumentParser):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [f"{p.prog} {a.dest}" for root in (build_parser(), energy_parser()) for p in parsers(root)
               for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and not a.help]
    assert not missing, missing


def test_seeds_option_overrides_every_task(tmp_path, monkeypatch):
    import neurostep.experiment

    toml = tmp_path / "s.toml"
    toml.write_text('[experiment]\nblocks = ["mamba"]\ntasks = ["digits", "sc"]\n'
                    '[tasks.sc]\ntask = "selective_copy"\nseeds = [0, 1, 2, 3, 4]\n')
    seen = {}
    monkeypatch.setattr(neurostep.experiment, "run_experiment", lambda cfg, report: seen.setdefault("cfg", cfg))
    assert main(["run", str(toml), "--seeds", "7", "8"]) == 0
    assert seen["cfg"].seeds_for("sc") == [7, 8] and seen["cfg"].seeds_for("digits") == [7, 8]


def test_device_option_overrides_every_task(tmp_path, monkeypatch, capsys):
    import neurostep.experiment

    toml = tmp_path / "d.toml"
    toml.write_text('[experiment]\nblocks = ["mamba"]\ntasks = ["digits", "sc"]\n'
                    '[tasks.sc]\ntask = "selective_copy"\ntrain = { steps = 5, device = "cuda" }\n')
    seen = {}
    monkeypatch.setattr(neurostep.experiment, "run_experiment", lambda cfg, report: seen.setdefault("cfg", cfg))
    assert main(["run", str(toml), "--device", "cpu"]) == 0
    cfg = seen["cfg"]
    assert cfg.train_for("sc")["device"] == "cpu" and cfg.train_for("digits")["device"] == "cpu"
    assert cfg.train_for("sc")["steps"] == 5                 # the task's other overrides stay
    assert main(["run", str(toml), "--device", "gpu"]) == 2
    assert '--device must be "cpu", "cuda" or "cuda:<n>", got \'gpu\'' in capsys.readouterr().err
    shift = tmp_path / "shift.toml"
    shift.write_text('[experiment]\nkind = "concept_shift"\n')
    assert main(["run", str(shift), "--device", "cuda"]) == 2
    assert "--device applies to kind = 'mixers' experiments" in capsys.readouterr().err
