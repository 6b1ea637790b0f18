import pytest

from flows.cli import build_parser, main


@pytest.mark.parametrize("command", [["--help"], ["night", "--help"], ["bootstrap-teacher", "--help"]])
def test_help_is_available(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(command)
    assert exc.value.code == 0 and "usage: edgeloop" in capsys.readouterr().out


def test_bad_override_is_a_clear_error_not_a_traceback(capsys):
    assert main(["night", "--set", "student.epochs=zero"]) == 2
    err = capsys.readouterr().err
    assert "student.epochs" in err and "Traceback" not in err


def test_malformed_set_is_named(capsys):
    assert main(["night", "--set", "no-equals-sign"]) == 2
    assert "SECTION.FIELD=VALUE" in capsys.readouterr().err


def test_rotate_key_makes_a_new_root_that_lists_the_new_key(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("EDGELOOP_HOME", str(tmp_path))
    assert main(["rotate-key", "targets", "--json"]) == 0
    new_keys = json.loads(capsys.readouterr().out)["new_key_ids"].split(", ")
    roots = sorted((tmp_path / "tuf" / "metadata").glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    root = json.loads(roots[-1].read_text())["signed"]
    assert int(roots[-1].name.split(".")[0]) >= 2 and root["roles"]["targets"]["keyids"] == new_keys
