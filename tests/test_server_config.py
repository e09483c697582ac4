"""`mediate serve`'s TOML configuration: defaults that work, one-line errors naming the key."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
from test_warrants_support import Carrier

from mediation.errors import UsageError
from mediation.log import LogConfig
from mediation.server.config import RELOADABLE, ServerConfig, reloaded_config
from mediation.server.config_file import Limit, load_config, parse_config


def test_no_file_means_every_default() -> None:
    config = load_config(None)
    assert config == ServerConfig()
    assert config.log == LogConfig()
    assert config.retrieval.address() == ("127.0.0.1", 37001)
    assert (config.delivery.report_interval, config.delivery.silent_after) == (1.0, 3)
    assert (config.delivery.keepalive_interval, config.delivery.keepalive_timeout) == (10.0, 30.0)
    assert config.delivery.window == 1024


def test_a_file_changes_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "mediation.toml"
    path.write_text(
        'data_dir = "/srv/mediation"\n'
        "[log]\ncommit_records = 64\ncommit_interval = 0.001\n"
        "[delivery]\nwindow = 256\nreconnect_max = 30\n"
        '[retrieval]\nlisten = "[::1]:0"\n'
        "[status]\nlog_interval = 60\n"
        '[tls]\nserver_names = ["mediation.example"]\n'
    )
    config = load_config(path)
    assert config.data_dir == Path("/srv/mediation")
    assert (config.log.commit_records, config.log.commit_interval) == (64, 0.001)
    assert config.log.ring_bytes == LogConfig().ring_bytes
    assert (config.delivery.window, config.delivery.reconnect_max) == (256, 30.0)
    assert config.delivery.report_interval == 1.0
    assert config.retrieval.address() == ("::1", 0)
    assert config.status.log_interval == 60.0 and config.status.interval == 1.0
    assert config.tls.server_names == ("mediation.example",)
    assert parse_config({"retrieval": {"listen": ""}}).retrieval.address() is None
    assert parse_config({"delivery": {"write_linger": 0.1}}).delivery.write_linger == 0.1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"delivery": {"windw": 5}}, "config [delivery] windw: unknown key"),
        ({"delivery": {"window": 0}}, "config [delivery] window: must be a whole number from 1 to"),
        ({"delivery": {"report_interval": "1s"}}, "config [delivery] report_interval: must be"),
        (
            {"delivery": {"write_linger": 0.5}},
            "config [delivery] write_linger: must be a number above 0 and at most 0.1",
        ),
        (
            {"delivery": {"reconnect_min": 5, "reconnect_max": 1}},
            "config [delivery] reconnect_max: must be at least",
        ),
        ({"log": {"commit_records": -1}}, "config [log] commit_records: must be a whole number"),
        ({"log": {"nonsense": 1}}, "config [log] nonsense: unknown key"),
        ({"retrieval": {"listen": "37001"}}, "config [retrieval] listen: must be"),
        ({"retrieval": {"listen": "127.0.0.1:70000"}}, "config [retrieval] listen: must be"),
        ({"status": {"interval": True}}, "config [status] interval: must be a number above 0"),
        (
            {"tls": {"server_names": "localhost"}},
            "config [tls] server_names: must be a non-empty list",
        ),
        ({"data_dir": ""}, "config data_dir: must be a non-empty string"),
        ({"delivery": 3}, "config delivery: must be a table"),
        ({"listen": "x"}, "config listen: unknown key"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_config(data)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def test_serve_refuses_a_bad_file_with_exit_2_and_one_line(tmp_path: Path, monkeypatch) -> None:
    carrier = Carrier(tmp_path, monkeypatch)
    bad = tmp_path / "bad.toml"
    bad.write_text("[delivery]\nwindow = -4\n")
    run = carrier("serve", "--config", str(bad))
    assert run.code == 2
    assert run.err == (
        "mediate: error: config [delivery] window: must be a whole number from 1 to 1048576, "
        "got -4\n"
    )
    broken = tmp_path / "broken.toml"
    broken.write_text("[delivery\n")
    run = carrier("serve", "--config", str(broken))
    assert run.code == 2 and run.err.startswith("mediate: error: --config: ")
    assert "is not valid TOML" in run.err and run.err.count("\n") == 1
    run = carrier("serve", "--config", str(tmp_path / "missing.toml"))
    assert run.code == 2 and "cannot read" in run.err


def _bad_values(kind: object) -> list[object]:
    """Values the validator must refuse for a field of type ``kind``."""
    if kind is int:
        return [2.5, True, 0, -1, "8", float("nan")]
    if kind is float:
        return [float("nan"), float("inf"), float("-inf"), 0, -1.0, True, "1"]
    if kind is str:
        return [5, True, ["x"]]
    if kind is bool:
        return [1, "true"]
    return ["x", [1], [""]]  # tuple[str, ...]


def _every_field() -> list[tuple[str, str, object]]:
    sections = typing.get_type_hints(ServerConfig)
    return [
        (section, key, kind)
        for section, cls in sections.items()
        if dataclasses.is_dataclass(cls)
        for key, kind in typing.get_type_hints(cls).items()
    ]


@pytest.mark.parametrize(("section", "key", "kind"), _every_field())
def test_every_field_of_every_section_refuses_nonsense(
    section: str, key: str, kind: object
) -> None:
    """Driven by the dataclasses: a field added to any section is covered without new code."""
    for value in _bad_values(kind):
        with pytest.raises(UsageError) as refused:
            parse_config({section: {key: value}})
        text = str(refused.value)
        assert text.startswith(f"config [{section}] {key}: must be "), (value, text)
        assert "\n" not in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"log": {"commit_interval": math.nan}}, "must be a number above 0 and at most 1, got nan"),
        ({"log": {"commit_interval": 5}}, "must be a number above 0 and at most 1, got 5"),
        ({"log": {"commit_records": 2.5}}, "must be a whole number of 1 or more, got 2.5"),
        ({"log": {"commit_records": True}}, "must be a whole number of 1 or more, got true"),
        ({"log": {"segment_bytes": 100}}, "must be at least 4096, got 100"),
        (
            {"delivery": {"window": 1 << 21}},
            "must be a whole number from 1 to 1048576, got 2097152",
        ),
        ({"status": {"interval": math.inf}}, "must be a number above 0 and at most 86400, got inf"),
        ({"status": {"interval": 86401}}, "must be a number above 0 and at most 86400, got 86401"),
        (
            {"clock": {"check_interval": -0.5}},
            "must be a number above 0 and at most 86400, got -0.5",
        ),
    ],
)
def test_refusals_name_the_value_and_what_is_expected(data: dict, message: str) -> None:
    section, table = next(iter(data.items()))
    key = next(iter(table))
    with pytest.raises(UsageError) as refused:
        parse_config(data)
    assert str(refused.value) == f"config [{section}] {key}: {message}"


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[status]\n# d\xe9faut\ninterval = 2\n")
    with pytest.raises(UsageError) as refused:
        load_config(path)
    assert str(refused.value) == f"--config: {path} is not UTF-8 text (line 2); save it as UTF-8"


def test_a_reload_applies_only_the_reloadable_keys() -> None:
    old = parse_config({"status": {"interval": 2}, "delivery": {"window": 64}})
    new = parse_config(
        {"status": {"interval": 3, "log_interval": 5}, "delivery": {"window": 8}, "data_dir": "/x"}
    )
    merged, applied, kept = reloaded_config(old, new)
    assert (merged.status.interval, merged.status.log_interval) == (3.0, 5.0)
    assert merged.delivery.window == 64 and merged.data_dir is None
    assert applied == [
        ("config [status] interval", 2.0, 3.0),
        ("config [status] log_interval", 10.0, 5.0),
    ]
    assert kept == [("config data_dir", None, Path("/x")), ("config [delivery] window", 64, 8)]
    # docs/operator.md lists these; change both together.
    assert {"status.interval", "status.log_interval", "clock.check_interval"} == RELOADABLE


def test_a_limit_can_admit_zero_for_a_key_where_it_means_something() -> None:
    """How a new key whose 0 means "off" is declared: one entry in LIMITS, no new code."""
    off_allowed = Limit(0, 10)
    assert off_allowed.admits(0) and off_allowed.admits(10) and not off_allowed.admits(11)
    assert off_allowed.describe(whole=True) == "a whole number from 0 to 10"
    assert Limit(0, 0.5, low_included=False).describe(whole=False) == (
        "a number above 0 and at most 0.5"
    )
    with pytest.raises(UsageError, match=r"^config \[tls\] server_names: must be a non-empty"):
        parse_config({"tls": {"server_names": []}})
