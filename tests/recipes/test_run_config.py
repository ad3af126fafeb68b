"""Run config resolution: defaults <- --config YAML <- --a.b overrides; errors name the key."""
import pytest

from seqmodels.run_config import format_config, merge_config, parse_run_args, parse_value

DEFAULTS = {"name": "run", "train": {"steps": 10, "lr": 0.001, "betas": [0.9, 0.95]}, "model": {}, "ds": {}}


def test_parse_value_yaml_and_numbers():
    assert parse_value("20") == 20 and isinstance(parse_value("20"), int)
    assert parse_value("3e-3") == 0.003  # YAML 1.1 leaves this a string
    assert parse_value("1e5") == 100000.0
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[gla, attention]") == ["gla", "attention"]
    assert parse_value("gla") == "gla"


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: demo\ntrain: {steps: 300}\nmodel: {mixer: gla, d_model: 64}\n")
    cfg = parse_run_args(
        ["--config", str(path), "--train.steps", "20", "--train.lr=3e-3", "--model.layers", "[gla, attention]",
         "--ds.zero_optimization.stage", "2", "--local_rank=1", "--local_rank", "0"],
        DEFAULTS, open_sections=("model", "ds"),
    )
    assert cfg == {
        "name": "demo",
        "train": {"steps": 20, "lr": 0.003, "betas": [0.9, 0.95]},
        "model": {"mixer": "gla", "d_model": 64, "layers": ["gla", "attention"]},
        "ds": {"zero_optimization": {"stage": 2}},
    }
    assert DEFAULTS["train"]["steps"] == 10  # defaults are not mutated
    assert "steps: 20" in format_config(cfg)


def test_flags_map_to_overrides():
    defaults = {"train": {"resume": "auto"}}
    cfg = parse_run_args(["--resume"], defaults, flags={"--resume": ("train.resume", True)})
    assert cfg["train"]["resume"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train.step", "5"], "unknown key 'train.step'; valid keys here: ['betas', 'lr', 'steps']"),
        (["--nme", "x"], "unknown key 'nme'"),
        (["--train", "5"], "train is a section"),
        (["--train.steps"], "--train.steps needs a value"),
        (["steps"], "unexpected argument 'steps'"),
        (["--train..steps", "1"], "bad override --train..steps"),
    ],
)
def test_bad_arguments_name_the_key(argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_run_args(argv, DEFAULTS, open_sections=("model", "ds"))


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {stpes: 3}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key 'train.stpes'"):
        parse_run_args(["--config", str(path)], DEFAULTS)
    with pytest.raises(ValueError, match="does not exist"):
        parse_run_args(["--config", str(tmp_path / "missing.yaml")], DEFAULTS)


def test_merge_open_sections_accept_any_key():
    merged = merge_config({"ds": {"a": 1}}, {"ds": {"b": {"c": 2}}}, open_sections=("ds",))
    assert merged == {"ds": {"a": 1, "b": {"c": 2}}}
