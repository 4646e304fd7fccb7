"""Who may change state, end to end: a real Orthanc with ``AuthenticationEnabled``, two
``RegisteredUsers`` (``admin``, ``viewer``) and ``BidsBridge.Writers: ["admin"]``.

Without credentials Orthanc itself answers 401; the viewer may read but each state-changing route
answers it 403; the admin's writes are queued (202); the token the plugin minted for its workers
(their GET calls work under authentication) counts as a writer. Last, everything this run left
behind — Orthanc's log, the worker logs, the queue database, the job records, the BIDS dataset,
Orthanc's storage — is searched for the passwords and tokens it used, with a real delivery to
XNAT (the emulator) whose password comes from a file and is swapped for an alias token.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests

from orthanc_plugin.embedded import EmbeddedOrthanc, free_port
from orthanc_plugin.worker_settings import AUTH_ENV
from tests.orthanc.conftest import TERMINAL, Harness, series_uid
from tests.xnat_emulator import XnatEmulator

pytestmark = pytest.mark.orthanc

#: Distinctive secrets, so that finding one anywhere cannot be a coincidence.
PASSWORDS = {"admin": "adm1n-0rthanc-Pw-9f3a61", "viewer": "v1ewer-0rthanc-Pw-2c7e04"}
WRONG_PASSWORD = "wr0ng-0rthanc-Pw-5d1e88"
XNAT_PASSWORD = "xn4t-pusher-Pw-b81d5e"
T1W = "5_anat-T1w_acq-tfl"
PUSH_RULES = """\
version: 1
rules:
  - name: images
    match: {Modality: MR}
    actions:
      - convert: {}
      - push_xnat: {server: emu, project: NEURO, subject: "{PatientID|alnum}", session: "S{StudyDate}"}
"""


@dataclass
class Run:
    harness: Harness
    root: Path
    series: str
    #: Alias and secret of every XNAT alias token the deliveries were issued.
    xnat_tokens: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.harness.url

    def post(self, path: str, user: str | None = None, password: str | None = None, **kwargs: Any) -> Any:
        auth = None if user is None else (user, password or PASSWORDS[user])
        return requests.post(f"{self.url}{path}", auth=auth, timeout=30, **kwargs)

    def get(self, path: str, user: str | None = None) -> Any:
        auth = None if user is None else (user, PASSWORDS[user])
        return requests.get(f"{self.url}{path}", auth=auth, timeout=30)

    def wait_all_terminal(self, timeout: float = 180) -> list[dict[str, Any]]:
        def finished() -> bool:
            jobs = self.harness.jobs()
            return bool(jobs) and all(job["state"] in TERMINAL for job in jobs)

        self.harness.wait_for(finished, timeout, "every job to finish")
        return self.harness.jobs()

    def worker_token(self) -> str:
        """The ``Authorization`` value the plugin minted, read from a worker's environment."""
        for pid in self.harness.get("/bidsbridge/status")["workers"]:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for entry in environ:
                if entry.startswith(AUTH_ENV.encode() + b"="):
                    return entry.split(b"=", 1)[1].decode()
        raise AssertionError("no worker carries the plugin's token")


@pytest.fixture(scope="module")
def run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("access")
    secrets = root / "secrets"  # outside Orthanc's work directory, as in a deployment
    secrets.mkdir()
    password_file = secrets / "xnat.password"
    password_file.write_text(XNAT_PASSWORD + "\n")
    password_file.chmod(0o600)
    rules = root / "rules.yaml"
    rules.write_text(PUSH_RULES)
    with XnatEmulator(users={"pusher": XNAT_PASSWORD}, admins=()) as xnat, pytest.MonkeyPatch.context() as patch:
        xnat.add_project("NEURO", owners=["pusher"])
        issued: list[str] = []
        issue = xnat.accounts.issue_token

        def recording_issue(user: Any) -> Any:
            token = issue(user)
            issued.extend((token.alias, token.secret))
            return token

        patch.setattr(xnat.accounts, "issue_token", recording_issue)
        server = EmbeddedOrthanc(
            workdir=root / "server", http_port=free_port(), dicom_port=free_port(), workers=2, stable_age=2,
            orthanc={"AuthenticationEnabled": True, "RegisteredUsers": PASSWORDS},
            bidsbridge={
                "Writers": ["admin"],
                "Rules": str(rules),
                "Destinations": {"emu": {"Url": xnat.url, "Username": "pusher", "PasswordFile": str(password_file),
                                         "UseAliasToken": True}},
            },
            http_auth=("admin", PASSWORDS["admin"]),
        )
        server.start()
        try:
            harness = Harness(server)
            harness.send([corpus / "dcm_qa_xa30" / "In" / T1W])
            result = Run(harness, root, "", issued)
            jobs = result.wait_all_terminal()
            assert sorted((job["kind"], job["state"]) for job in jobs) == [("convert", "done"), ("push", "done")], jobs
            result.series = harness.orthanc_series_id(series_uid(corpus / "dcm_qa_xa30" / "In" / T1W))
            yield result
        finally:
            server.stop()


def _label_map(run: Run) -> bytes:
    """A label map on the grid of the series' converted image: a cube of label 1 in its middle."""
    convert = next(job for job in run.harness.jobs() if job["kind"] == "convert")
    image = next(o for o in convert["outputs"] if o.endswith(".nii.gz") and not o.startswith("sourcedata/"))
    reference = nib.load(run.harness.server.bids_root / image)
    labels = np.zeros(reference.shape[:3], np.uint8)
    middle = tuple(slice(n // 2 - 2, n // 2 + 2) for n in labels.shape)
    labels[middle] = 1
    return gzip.compress(nib.Nifti1Image(labels, reference.affine).to_bytes())


def test_state_changing_routes_need_a_writer(run: Run) -> None:
    finished = next(job for job in run.harness.jobs() if job["kind"] == "convert")
    writes = {
        "retry": (f"/bidsbridge/jobs/{finished['id']}/retry", {}),
        "convert": (f"/bidsbridge/series/{run.series}/convert", {"data": b'{"derive": []}'}),
        "segmentations": (f"/bidsbridge/series/{run.series}/segmentations",
                          {"data": _label_map(run),
                           "headers": {"X-Bidsbridge-Labels": '{"1": "cube"}', "X-Bidsbridge-Desc": "access"}}),
    }
    def requested() -> list[int]:  # the jobs people asked for (workers add push jobs by themselves)
        return sorted(job["id"] for job in run.harness.jobs() if job["kind"] in ("convert", "segment"))

    accepted_ids = []
    for name, (path, options) in writes.items():
        assert run.post(path, **options).status_code == 401, name  # Orthanc: no credentials
        assert run.post(path, "admin", WRONG_PASSWORD, **options).status_code == 401, name
        before = requested()
        refused = run.post(path, "viewer", **options)
        assert refused.status_code == 403, (name, refused.text)
        assert requested() == before  # a refusal queues nothing
        assert refused.headers["Content-Type"].startswith("application/json")
        error = refused.json()
        assert error["status"] == 403 and "user 'viewer' may not" in error["error"], error
        assert "BidsBridge.Writers" in error["error"]
        accepted = run.post(path, "admin", **options)
        assert accepted.status_code == 202, (name, accepted.text)
        assert accepted.json()["state"] in ("queued", "running")  # idle workers are woken at once
        accepted_ids.append(accepted.json()["id"])
    # Only the admin's writes made jobs (a conversion asked for while the retried one is still
    # queued joins it), and they ran to their end.
    assert accepted_ids[0] == finished["id"] and set(requested()) == set(accepted_ids)
    jobs = {job["id"]: job for job in run.wait_all_terminal()}
    assert [jobs[i]["state"] for i in accepted_ids] == ["done"] * 3, [jobs[i] for i in accepted_ids]


def test_reads_stay_open_to_the_viewer(run: Run) -> None:
    job = run.harness.jobs()[-1]
    for path in ("/bidsbridge/jobs", f"/bidsbridge/jobs/{job['id']}", "/bidsbridge/status", "/bidsbridge/rules",
                 f"/bidsbridge/series/{run.series}/nifti"):
        assert run.get(path).status_code == 401, path  # Orthanc: no credentials
        answer = run.get(path, "viewer")
        assert answer.status_code == 200, (path, answer.text)
    assert run.get(f"/series/{run.series}", "viewer").status_code == 200  # Orthanc's own routes: untouched


def test_the_plugins_own_token_counts_as_a_writer(run: Run) -> None:
    push = next(job for job in run.harness.jobs() if job["kind"] == "push" and job["state"] == "done")
    token = run.worker_token()
    assert token.startswith("Bearer ")
    retried = requests.post(f"{run.url}/bidsbridge/jobs/{push['id']}/retry", headers={"Authorization": token},
                            timeout=30)
    assert retried.status_code == 202, retried.text
    jobs = run.wait_all_terminal()
    # Every job did its work; the SEG the segment job stored back is a series of its own, which
    # is skipped as made by bidsbridge.
    assert all(job["state"] == "done" or "made by bidsbridge" in (job["error"] or "") for job in jobs), jobs


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_no_password_or_token_is_left_anywhere(run: Run) -> None:
    """Run last: it stops Orthanc, then reads every file of the run (byte for byte)."""
    assert run.post(f"/bidsbridge/series/{run.series}/convert", "viewer").status_code == 403  # a refusal is logged
    jobs = run.wait_all_terminal()
    token = run.worker_token()
    assert run.xnat_tokens, "the deliveries never swapped the XNAT password for an alias token"
    secrets = {
        **{f"{user}'s password": password for user, password in PASSWORDS.items()},
        "a wrong password": WRONG_PASSWORD,
        **{f"{user}'s Basic credentials": _basic(user, password) for user, password in PASSWORDS.items()},
        "the XNAT password": XNAT_PASSWORD,
        "the plugin's token": token.removeprefix("Bearer "),
        **{f"XNAT alias token part {i}": part for i, part in enumerate(run.xnat_tokens)},
    }
    # The job records, as the REST API gives them.
    records = [run.get("/bidsbridge/jobs?limit=10000", "admin").text, run.get("/bidsbridge/status", "admin").text,
               run.get("/bidsbridge/rules", "admin").text]
    records += [run.get(f"/bidsbridge/jobs/{job['id']}", "admin").text for job in jobs]
    for what, secret in secrets.items():
        assert not [r for r in records if secret in r], f"{what} is in a job record"
    run.harness.server.stop()

    # Every file the run left: Orthanc's log, index and storage, the queue database, the worker logs,
    # the uploads, the BIDS dataset. (The XNAT password file lies outside, as in a deployment.)
    server = run.harness.server
    files = [p for p in sorted(server.workdir.rglob("*")) if p.is_file()]
    kinds = {"orthanc.log", "queue.sqlite3", "dataset_description.json"}
    assert kinds <= {p.name for p in files} and any(p.suffix == ".log" and p.parent.name == "logs" for p in files)
    leaks = []
    for path in files:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # .nii.gz and the like: search what they hold
            data += gzip.decompress(data)
        for what, secret in secrets.items():
            if path == server.config_path and secret in PASSWORDS.values():
                continue  # Orthanc's configuration holds RegisteredUsers: that is where Orthanc reads them
            if secret.encode() in data:
                leaks.append(f"{what} in {path.relative_to(server.workdir)}")
    # The search does find what is there: Orthanc reads RegisteredUsers from its configuration.
    assert PASSWORDS["admin"].encode() in server.config_path.read_bytes()
    print(f"\nsearched {len(files)} files and {len(records)} records for {len(secrets)} secrets")
    assert leaks == []
    destination = json.loads(server.config_path.read_text())["BidsBridge"]["Destinations"]["emu"]
    assert server.workdir not in Path(destination["PasswordFile"]).parents
