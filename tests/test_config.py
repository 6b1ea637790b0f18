import pytest

from edgeloop.config import ConfigError, Settings, load_settings


def test_defaults_describe_the_bundled_data_and_validate():
    s = load_settings(environ={})
    assert s.dataset.resolved_path().exists()
    assert s.dataset.seed_fraction + s.dataset.golden_fraction < 1
    assert s.tracking_uri().startswith("sqlite:///") and s.tracking_uri().endswith("mlflow.db")


def test_environment_overrides_nested_fields_with_types(tmp_path):
    s = load_settings(environ={"EDGELOOP_HOME": str(tmp_path), "EDGELOOP__STUDENT__EPOCHS": "3",
                               "EDGELOOP__GATE__MIN_ACCURACY": "0.5", "EDGELOOP__DATASET__JSON_KEYS": "[a, b]",
                               "EDGELOOP__DATASET__FORMAT": "json_splits"})
    assert s.student.epochs == 3 and s.gate.min_accuracy == 0.5 and s.dataset.json_keys == ["a", "b"]
    assert s.home_path() == tmp_path.resolve()


def test_file_then_environment_then_overrides(tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text("student:\n  epochs: 7\n  lr: 0.01\n")
    s = load_settings(cfg, overrides={"student": {"lr": 0.02}}, environ={"EDGELOOP__STUDENT__EPOCHS": "8"})
    assert (s.student.epochs, s.student.lr) == (8, 0.02)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"student": {"epochs": 0}}, "student.epochs"),
    ({"student": {"hidden_size": 130, "num_heads": 4}}, "divisible"),
    ({"dataset": {"seed_fraction": 0.6, "golden_fraction": 0.5}}, "must be < 1"),
    ({"gate": {"bogus": 1}}, "gate.bogus"),
    ({"dataset": {"format": "xml"}}, "dataset.format"),
])
def test_invalid_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides, environ={})


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_flat_params_cover_every_section():
    flat = load_settings(environ={}).to_flat_params()
    assert {"student.epochs", "gate.min_accuracy", "dataset.path", "teacher.lr_head"} <= set(flat)


def test_set_assignments_read_like_the_environment_and_rank_above_it(tmp_path):
    s = load_settings(environ={"EDGELOOP__STUDENT__EPOCHS": "8", "EDGELOOP__STUDENT__LR": "0.5"},
                      assignments=["student.epochs=4", "dataset.json_keys=[a, b]", "dataset.format=json_splits",
                                   "dataset.max_rows=null", "student.warm_start=no", "home=" + str(tmp_path)])
    assert (s.student.epochs, s.student.lr, s.student.warm_start) == (4, 0.5, False)
    assert s.dataset.json_keys == ["a", "b"] and s.dataset.max_rows is None
    assert s.home_path() == tmp_path.resolve()
    env = load_settings(environ={"EDGELOOP__DATASET__JSON_KEYS": "[a, b]", "EDGELOOP__DATASET__FORMAT": "json_splits"})
    assert env.dataset == s.dataset.model_copy(update={"max_rows": None})  # one parser for both


@pytest.mark.parametrize(("where", "message"), [
    ({"environ": {"EDGELOOP__STUDENT__EPOCHS": "zero"}}, "student.epochs"),
    ({"environ": {"EDGELOOP__BOGUS": "1"}}, "bogus"),  # a typo is an error, not silently ignored
    ({"environ": {"EDGELOOP__GATE__BOGUS": "1"}}, "gate.bogus"),
    ({"environ": {}, "assignments": ["bogus.field=1"]}, "bogus: Extra inputs"),
    ({"environ": {}, "assignments": ["student.epochs"]}, "SECTION.FIELD=VALUE"),
    ({"environ": {}, "assignments": ["student..epochs=1"]}, "SECTION.FIELD=VALUE"),
])
def test_bad_environment_and_assignments_name_the_field(where, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(**where)


def test_home_shortcut_yields_to_the_full_variable(tmp_path):
    s = load_settings(environ={"EDGELOOP_HOME": str(tmp_path / "a"), "EDGELOOP__HOME": str(tmp_path / "b")})
    assert s.home_path() == (tmp_path / "b").resolve()


def test_config_file_from_the_environment_and_bad_files(tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text("gate:\n  min_accuracy: 0.6\n")
    assert load_settings(environ={"EDGELOOP_CONFIG": str(cfg)}).gate.min_accuracy == 0.6
    cfg.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(cfg, environ={})
    cfg.write_text("student: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(cfg, environ={})


def test_settings_class_reads_the_same_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELOOP__STUDENT__EPOCHS", "5")
    monkeypatch.setenv("EDGELOOP_HOME", str(tmp_path))
    assert Settings() == load_settings()
    assert Settings().student.epochs == 5 and Settings(student={"epochs": 6}).student.epochs == 6
