"""No password, token alias or token secret in logs, records, reports or error messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.xnat.conftest import PASSWORDS, PROJECT, make_destination
from tests.xnat.test_push import SESSION, SUBJECT
from tests.xnat_emulator import XnatEmulator
from xnat_container import XnatError, check_destination, push_session
from xnat_container.cli import main as cli_main

#: The emulator's own logger stands for XNAT's server logs (its access log records request lines,
#: and XNAT's token API puts the secret in the invalidation path); everything else is ours.
SERVER_SIDE = "tests.xnat_emulator"


def test_no_secret_anywhere(xa30_bids: Path, emulator: XnatEmulator, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    issued: list[tuple[str, str]] = []
    issue = emulator.accounts.issue_token

    def recording_issue(user):
        token = issue(user)
        issued.append((token.alias, token.secret))
        return token

    monkeypatch.setattr(emulator.accounts, "issue_token", recording_issue)
    records: list[str] = []

    # A delivery with an alias token, under faults (so retries log their reasons).
    emulator.set_faults(error_rate=0.2, drop_rate=0.1)
    token_destination = make_destination(emulator.url, use_alias_token=True, retries=8)
    for _ in range(10):
        try:
            report = push_session(token_destination, PROJECT, xa30_bids, SUBJECT, SESSION)
            records.append(json.dumps(report.to_dict()))
            break
        except XnatError as exc:
            records.append(str(exc))
    emulator.clear_faults()
    assert issued, "the alias token was never issued"
    assert all(emulator.accounts.token(alias, secret) is None for alias, secret in issued), "token not invalidated"

    # Failures: wrong password, no access, check diagnoses, CLI.
    for destination in (
        make_destination(emulator.url, password="wr0ng-Pw-123456"),
        make_destination(emulator.url, user="outsider"),
    ):
        with pytest.raises(XnatError) as caught:
            push_session(destination, PROJECT, xa30_bids, SUBJECT, SESSION)
        records.append(str(caught.value))
        records.append(repr(destination) + str(destination.to_dict()))
        records.append(check_destination(destination, PROJECT).message)
    monkeypatch.setenv("XNAT_USER", "uploader")
    monkeypatch.setenv("XNAT_PASS", PASSWORDS["uploader"])
    assert cli_main(["-v", "xnat", "check", "--server", emulator.url, "--project", PROJECT]) == 0
    assert cli_main(["-v", "xnat", "push", str(xa30_bids), "--server", emulator.url, "--project", PROJECT]) == 0
    output = capsys.readouterr()
    records += [output.out, output.err]

    ours = [r for r in caplog.records if not r.name.startswith(SERVER_SIDE)]
    texts = [r.getMessage() for r in ours] + [repr(r.args) for r in ours] + records
    secrets = [*PASSWORDS.values(), "wr0ng-Pw-123456"] + [part for token in issued for part in token]
    print(f"\nsearched {len(texts)} log messages and records for {len(secrets)} secrets")
    assert len(ours) > 50
    for secret in secrets:
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"a secret leaked: {leaks[0][:200]}"
