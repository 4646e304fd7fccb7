"""The ``BidsBridge`` configuration section, read once into a typed object: defaults, and a clear
error naming the key for every bad value (the plugin then refuses to start)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.config import ConfigError, parse_config


def _config(tmp_path: Path, **section: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"BidsRoot": str(tmp_path / "bids"), "StateDirectory": str(tmp_path / "state"),
                            "Python": sys.executable}
    base.update(section)
    return {"HttpPort": 8123, "BidsBridge": base}


def test_defaults(tmp_path: Path) -> None:
    config = parse_config(_config(tmp_path))
    assert config.enabled and config.max_attempts == 3 and config.job_timeout == 1800.0
    assert config.orthanc_url == "http://127.0.0.1:8123" and config.catch_up == "since-last-run"
    assert config.dataset_roots() == {"default": tmp_path / "bids"}
    assert (tmp_path / "bids").is_dir() and (tmp_path / "state").is_dir()
    assert config.rules_path is None and config.destinations == {}


def test_datasets_credentials_and_url(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("secret")
    config = parse_config(_config(tmp_path, Datasets={"neuro": str(tmp_path / "neuro")}, RestUsername="u",
                                  RestPasswordFile=str(password), OrthancUrl="https://pacs:8042/", CatchUp="all"))
    assert config.dataset_roots() == {"default": tmp_path / "bids", "neuro": tmp_path / "neuro"}
    assert (config.rest_username, config.rest_password_file) == ("u", password)
    assert config.orthanc_url == "https://pacs:8042" and config.catch_up == "all"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"Workers": 0}, "BidsBridge.Workers must be an integer >= 1, not 0"),
        ({"Workers": True}, "BidsBridge.Workers must be an integer >= 1, not True"),
        ({"JobTimeout": "long"}, "BidsBridge.JobTimeout must be a number >= 1, not 'long'"),
        ({"Enabled": "yes"}, "BidsBridge.Enabled must be true or false, not 'yes'"),
        ({"Wokers": 2}, "BidsBridge.Wokers is not a known setting"),
        ({"BidsRoot": "relative/dir"}, "BidsBridge.BidsRoot must be an absolute path"),
        ({"CatchUp": "sometimes"}, "BidsBridge.CatchUp must be one of since-last-run, all, none"),
        ({"OrthancUrl": "ftp://x"}, "BidsBridge.OrthancUrl must start with http:// or https://"),
        ({"RestUsername": "u"}, "BidsBridge.RestUsername and BidsBridge.RestPasswordFile go together"),
        ({"Datasets": {"default": "/x"}}, "BidsBridge.Datasets.default is BidsRoot"),
        ({"Datasets": {"a b": "/x"}}, "is not a usable dataset name"),
        ({"Rules": "/no/such/rules.yaml"}, "BidsBridge.Rules: /no/such/rules.yaml is not an existing file"),
        ({"Python": "/no/python"}, "BidsBridge.Python: /no/python is not an executable interpreter"),
        ({"Destinations": []}, "BidsBridge.Destinations must be a JSON object"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key(tmp_path: Path, section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(tmp_path, **section))
    assert message in str(caught.value)
    assert not caught.value.retryable


def test_the_section_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the BidsBridge section is missing"):
        parse_config({})
