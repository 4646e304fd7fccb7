"""Script that orthanc-python loads (``"PythonScript"`` in Orthanc's configuration).

It runs inside Orthanc's embedded interpreter (Debian's Python 3.11), so before importing the
plugin it puts on ``sys.path`` the folder holding this package and the site-packages of the
interpreter the workers use (``BidsBridge.Python``, default: the project's venv).
"""

import glob
import json
import os
import sys

import orthanc


def _prepare_path() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # orthanc-python puts this script's folder first on sys.path: its modules would shadow
    # same-named standard-library ones (e.g. a module named like "queue"). Only the parent is wanted.
    while here in sys.path:
        sys.path.remove(here)
    package_parent = os.path.dirname(here)
    if package_parent not in sys.path:
        sys.path.insert(0, package_parent)
    from orthanc_plugin.config import default_python  # noqa: PLC0415 - needs the path above

    section = json.loads(orthanc.GetConfiguration()).get("BidsBridge") or {}
    python = section.get("Python") if isinstance(section, dict) else None
    python = python or str(default_python())
    venv = os.path.dirname(os.path.dirname(python))
    pattern = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    for site in glob.glob(pattern):
        if site not in sys.path:
            sys.path.insert(1, site)


_prepare_path()

from orthanc_plugin.plugin import install  # noqa: E402

PLUGIN = install()
