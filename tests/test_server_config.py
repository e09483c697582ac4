"""`mediate serve`'s TOML configuration: defaults that work, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_warrants_support import Carrier

from mediation.errors import UsageError
from mediation.log import LogConfig
from mediation.server.config import ServerConfig, load_config, parse_config


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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"delivery": {"windw": 5}}, "config [delivery] windw: unknown key"),
        ({"delivery": {"window": 0}}, "config [delivery] window: must be a whole number from 1 to"),
        ({"delivery": {"report_interval": "1s"}}, "config [delivery] report_interval: must be"),
        (
            {"delivery": {"reconnect_min": 5, "reconnect_max": 1}},
            "config [delivery] reconnect_max: must be at least",
        ),
        ({"log": {"commit_records": -1}}, "config [log] commit_records: must be a whole number"),
        ({"log": {"nonsense": 1}}, "config [log] nonsense: unknown key"),
        ({"retrieval": {"listen": "37001"}}, "config [retrieval] listen: must be"),
        ({"retrieval": {"listen": "127.0.0.1:70000"}}, "config [retrieval] listen: must be"),
        ({"status": {"interval": True}}, "config [status] interval: must be a number above 0"),
        ({"tls": {"server_names": "localhost"}}, "config [tls] server_names: must be a list"),
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
