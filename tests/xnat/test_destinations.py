"""``BidsBridge.Destinations`` parsing: typed values, secrets from env or file only, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from xnat_container import Destination, XnatConfigError, parse_destinations
from xnat_container.destinations import destination_from_url

ENV = {"SITE_XNAT_PASS": "env-Secret-42", "SITE_XNAT_USER": "robot"}


def parse(section: dict[str, object]) -> dict[str, Destination]:
    return parse_destinations(section, environ=ENV)


def test_full_destination(tmp_path: Path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    secret = tmp_path / "secret"
    secret.write_text("  file-Secret-7\n")
    found = parse(
        {
            "site": {
                "Url": "https://xnat.example.org/xnat/",
                "UsernameEnv": "SITE_XNAT_USER",
                "PasswordFile": str(secret),
                "CaBundle": str(bundle),
                "ConnectTimeout": 3,
                "ReadTimeout": 60.5,
                "Retries": 2,
                "UseAliasToken": True,
                "SessionLabel": "{subject}_{session}_MR",
            },
            "local": {"Url": "http://127.0.0.1:8080", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS"},
        }
    )
    site = found["site"]
    assert site.url == "https://xnat.example.org/xnat"
    assert site.username == "robot" and site.password.reveal() == "file-Secret-7"
    assert site.verify == bundle and site.timeout == (3.0, 60.5) and site.retries == 2
    assert site.use_alias_token and site.session_label == "{subject}_{session}_MR"
    local = found["local"]
    assert local.verify is True and local.password.reveal() == "env-Secret-42" and local.retries == 5
    for shown in (repr(site), str(site), str(site.to_dict()), repr(local), f"{local.password}"):
        assert "Secret-" not in shown


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"Username": "u", "PasswordEnv": "SITE_XNAT_PASS"}, r"BidsBridge\.Destinations\.site\.Url is required"),
        ({"Url": "ftp://x", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS"}, r"site\.Url must be an http\(s\) URL"),
        ({"Url": "https://u:p@x", "Username": "u", "PasswordEnv": "X"}, r"site\.Url must not contain credentials"),
        ({"Url": "https://x", "Username": "u", "Password": "p"}, r"site\.Password is not allowed"),
        ({"Url": "https://x", "Username": "u"}, r"site: give exactly one of PasswordFile or PasswordEnv"),
        ({"Url": "https://x", "Username": "u", "PasswordEnv": "MISSING"}, r"site\.PasswordEnv: .*MISSING is not set"),
        ({"Url": "https://x", "Username": "u", "PasswordFile": "/no/such"}, r"site\.PasswordFile: cannot read"),
        ({"Url": "https://x", "PasswordEnv": "SITE_XNAT_PASS"}, r"site\.Username is required"),
        ({"Url": "https://x", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS", "Verify": "no"}, r"site\.Verify must"),
        ({"Url": "https://x", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS", "Retries": -1}, r"site\.Retries must"),
        ({"Url": "https://x", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS", "ReadTimeout": 0}, r"ReadTimeout"),
        ({"Url": "https://x", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS", "CaBundle": "/no"}, r"site\.CaBundle"),
        ({"Url": "https://x", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS", "Colour": 1}, r"site\.Colour is not"),
        (
            {"Url": "https://x", "Username": "u", "PasswordEnv": "SITE_XNAT_PASS", "SubjectLabel": "{patient}"},
            r"site\.SubjectLabel uses unknown field",
        ),
    ],
)
def test_errors_name_the_key(section: dict[str, object], message: str):
    with pytest.raises(XnatConfigError, match=message) as caught:
        parse({"site": section})
    assert isinstance(caught.value, ValueError)
    assert "env-Secret-42" not in str(caught.value)


def test_password_in_config_is_refused_without_echoing_it():
    with pytest.raises(XnatConfigError) as caught:
        parse({"site": {"Url": "https://x", "Username": "u", "Password": "plain-Secret-9"}})
    assert "plain-Secret-9" not in str(caught.value)


def test_section_shape():
    assert parse_destinations(None) == {}
    with pytest.raises(XnatConfigError, match=r"BidsBridge\.Destinations must be an object"):
        parse_destinations(["x"])  # type: ignore[arg-type]
    with pytest.raises(XnatConfigError, match="an alias must be"):
        parse({"bad alias": {"Url": "https://x"}})


def test_url_destination_takes_container_service_variables():
    destination = destination_from_url("https://xnat.example.org/", environ={"XNAT_USER": "a", "XNAT_PASS": "b"})
    assert destination.url == "https://xnat.example.org"
    assert (destination.username, destination.password.reveal()) == ("a", "b")
    with pytest.raises(XnatConfigError, match="set XNAT_USER and XNAT_PASS"):
        destination_from_url("https://xnat.example.org", environ={})
