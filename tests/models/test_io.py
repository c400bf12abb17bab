"""The input and output layer: one reader with a budget, one atomic writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loraserve.models.io import (
    MAX_DEPTH,
    ConfigError,
    check_outputs,
    parse_yaml,
    read_text,
    tracking_inputs,
    write_atomic,
)


def test_merge_keys_are_overridden_by_the_mappings_own_keys() -> None:
    text = "base: &b {rank: 8, rate: 1.0}\nadapter:\n  <<: *b\n  rate: 2.0\n"
    assert parse_yaml(text, "f")["adapter"] == {"rank": 8, "rate": 2.0}


def test_aliases_within_the_budget_are_shared_values() -> None:
    text = "mods: &m [q_proj, v_proj]\n" + "".join(f"a{i}: *m\n" for i in range(1000))
    data = parse_yaml(text, "f")
    assert data["a999"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize(("text", "fragment"), [
    ("a: 1\na: 2\n", "a: the key 'a' is given twice (at line 2"),
    ("x: {y: [1, .nan]}\n", "x.y[1]: .nan is not a finite number"),
    ("x: -.inf\n", "x: -.inf is not a finite number"),
    ("x: &x [*x]\n", "refers to a collection that contains it"),
    ("[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2), "nested deeper than"),
    ("x: !!binary aGk=\n", "is not supported"),
    ("x: !!python/name:os.system x\n", "is not supported"),
    ("x: [1, 2\n", "YAML syntax error at line"),
])
def test_bad_yaml_is_one_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_yaml(text, "f.yaml")
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_text_must_be_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"line 2: byte 0xe9 is not UTF-8"):
        read_text(path)
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")  # a byte-order mark is fine
    assert read_text(path) == "a: 1\n"


def test_outputs_may_not_name_what_was_read(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("a: 1\n")
    with tracking_inputs():
        read_text(config)
        with pytest.raises(ConfigError, match="is an input of this command"):
            check_outputs({"-o": tmp_path / "." / "c.yaml"})
    check_outputs({"-o": config})  # outside the tracked command nothing was read


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plan.yaml"
    target.write_text("old\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C between writing the temporary and renaming it

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_atomic(target, "newer\n")
    with pytest.raises(ConfigError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "x.yaml", "x")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
