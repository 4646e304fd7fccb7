"""bidsbridge's Orthanc side: change events, durable job queue, worker processes, REST routes.

The module Orthanc loads is :mod:`orthanc_plugin.orthanc_entry`; nothing here imports the
``orthanc`` module at import time, so the command line and the tests can use this package.
"""

__all__: list[str] = []
