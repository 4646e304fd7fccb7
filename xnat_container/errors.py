"""The errors of XNAT delivery, split by what the caller should do about them.

Every class carries :attr:`XnatError.retryable`: the plugin's durable queue retries a job that
failed with a retryable error later (XNAT down, slow, answering 5xx) and marks it failed at once
otherwise (wrong password, no access, a request XNAT refuses). Messages never contain passwords,
token secrets or alias tokens.
"""

from __future__ import annotations

from converters.errors import BidsBridgeError

__all__ = [
    "XnatAuthError",
    "XnatConfigError",
    "XnatError",
    "XnatLabelError",
    "XnatRequestError",
    "XnatTLSError",
    "XnatUnavailable",
    "XnatVerificationError",
]


class XnatError(BidsBridgeError):
    """Base class of every XNAT delivery error."""

    #: True when trying again later may succeed.
    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: HTTP status XNAT answered, when there was an answer.
        self.status = status


class XnatConfigError(XnatError, ValueError):
    """A destination is configured wrongly; the message names the configuration key."""


class XnatUnavailable(XnatError):
    """XNAT could not be reached or kept failing (connection errors, timeouts, 5xx) after the
    client's own retries. Retry the delivery later; what was delivered stays delivered."""

    retryable = True


class XnatAuthError(XnatError):
    """XNAT refused the credentials (401) or the account lacks access (403). Retrying cannot
    help: fix the password, token or project role."""


class XnatRequestError(XnatError):
    """XNAT refused a request (4xx other than 401/403, or an answer that breaks the protocol,
    such as a ``{"duplicates": [...]}`` reply to an upload made with ``overwrite=true``)."""


class XnatLabelError(XnatRequestError, ValueError):
    """A subject or session label has nothing left after sanitizing to XNAT's characters."""


class XnatTLSError(XnatError):
    """The TLS handshake failed (untrusted or mismatching certificate, or https spoken to a plain
    HTTP server). Fix the URL, ``CaBundle`` or the server's certificate."""


class XnatVerificationError(XnatError):
    """A file XNAT lists after the upload differs (size or digest) from the local file. The next
    delivery uploads it again."""

    retryable = True
