import pytest

from neurostep.experiment.config import config_hash, load_config, parse_config


def test_defaults_and_hash(make_toml):
    cfg = load_config(make_toml())
    assert cfg.name == "tiny" and cfg.kind == "mixers" and cfg.seeds == [0]
    assert cfg.backbone["dim"] == 16 and cfg.train["lr"] == pytest.approx(2e-3)
    assert cfg.task_options["digits"]["patch"] == 2 and cfg.task_options["digits"]["task"] == "digits"
    h = cfg.config_hash("softmax_attention", "digits")
    assert len(h) == 12 and h == cfg.config_hash("softmax_attention", "digits")
    # The block's hash does not depend on which other blocks or seeds the file lists.
    cfg2 = load_config(make_toml(name="tiny", seeds="[0, 1]", blocks='["softmax_attention", "ninformer"]'))
    assert cfg2.config_hash("softmax_attention", "digits") == h
    # ...but it does depend on anything that changes the result.
    cfg3 = load_config(make_toml(steps=5))
    assert cfg3.config_hash("softmax_attention", "digits") != h
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})


def test_bad_key_names_key_and_allowed(make_toml):
    with pytest.raises(ValueError, match=r"unknown key 'step' in \[train\]; allowed keys: .*'steps'"):
        parse_config({"experiment": {"blocks": ["x"], "tasks": ["digits"]}, "train": {"step": 3}}, name="t")
    with pytest.raises(ValueError, match=r"unknown key 'patchsize' in \[tasks.digits\]; allowed keys: .*'patch'"):
        load_config(make_toml(extra="[tasks.digits]\npatchsize = 2\n"))
    with pytest.raises(ValueError, match=r"unknown key 'trian' in \[top level\]"):
        parse_config({"trian": {}}, name="t")


def test_bad_values():
    base = {"experiment": {"blocks": ["softmax_attention"], "tasks": ["digits"]}}
    with pytest.raises(ValueError, match="unknown task 'mnist'.*available tasks"):
        parse_config({"experiment": {"blocks": ["a"], "tasks": ["mnist"]}}, name="t")
    with pytest.raises(TypeError, match=r"\[train\] steps must be int"):
        parse_config({**base, "train": {"steps": "3"}}, name="t")
    with pytest.raises(ValueError, match=r"\[train\] target_evals must be >= 1, got 0"):
        parse_config({**base, "train": {"target_evals": 0}}, name="t")
    with pytest.raises(ValueError, match=r"\[train\] warmup must be a fraction"):
        parse_config({**base, "train": {"warmup": 1.5}}, name="t")
    with pytest.raises(ValueError, match="kind must be one of"):
        parse_config({"experiment": {"kind": "zoo"}}, name="t")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        parse_config({**base, "backbone": {"dim": 10, "num_heads": 4}}, name="t")
    with pytest.raises(ValueError, match="blocks is empty"):
        parse_config({"experiment": {"tasks": ["digits"]}}, name="t")
    with pytest.raises(ValueError, match=r"\[blocks.mamba\] is not run by any task"):
        parse_config({**base, "blocks": {"mamba": {"d_state": 4}}}, name="t")
    with pytest.raises(ValueError, match="unknown learner"):
        parse_config({"experiment": {"kind": "concept_shift", "learners": ["adam"]}}, name="t")


def test_task_alias_and_invalid_toml(tmp_path, make_toml):
    cfg = load_config(make_toml(extra='[tasks.digits]\nencoding = "rate"\nnum_steps = 2\n'))
    assert cfg.task_options["digits"]["encoding"] == "rate"
    cfg = parse_config({"experiment": {"blocks": ["a"], "tasks": ["spikes"]},
                        "tasks": {"spikes": {"task": "digits", "encoding": "latency"}}}, name="t")
    assert cfg.task_options["spikes"]["task"] == "digits"
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiment\nname = 1")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")


def test_shipped_experiments_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "experiments"
    for path in sorted(root.glob("*.toml")):
        cfg = load_config(path)
        assert cfg.name == path.stem


def test_the_full_grid_lists_every_registered_mixer_and_task():
    from pathlib import Path

    from neurostep.experiment.tasks import TASKS
    from neurostep.models import list_mixers

    cfg = load_config(Path(__file__).resolve().parents[2] / "experiments" / "full.toml")
    assert set(cfg.blocks) == set(list_mixers())
    # every task (some also at other sizes, for the scaling sweeps)
    assert set(TASKS) <= set(cfg.tasks)
