"""Users, JSESSION sessions and alias tokens: who a request comes from.

XNAT accepts three kinds of credentials, and so does the emulator: HTTP basic auth with a login and
password, basic auth with an alias token (``alias`` / ``secret`` from ``/data/services/tokens/issue``), and the
``JSESSIONID`` cookie that XNAT hands out on the first authenticated request (or from
``PUT /data/services/auth``).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: XNAT's default lifetime of an alias token (48 hours).
TOKEN_LIFETIME_SECONDS = 48 * 3600


@dataclass(frozen=True)
class User:
    login: str
    password: str
    admin: bool = False
    user_id: int = 0

    @property
    def email(self) -> str:
        return f"{self.login}@example.org"


@dataclass(frozen=True)
class AliasToken:
    alias: str
    secret: str
    login: str
    created_ms: int
    expires_ms: int
    token_id: int


class Accounts:
    """Thread-safe registry of users, open sessions and issued tokens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._sessions: dict[str, str] = {}
        self._tokens: dict[str, AliasToken] = {}

    def add_user(self, login: str, password: str, *, admin: bool = False) -> User:
        with self._lock:
            user = User(login, password, admin, user_id=len(self._users) + 1)
            self._users[login] = user
            return user

    def user(self, login: str) -> User | None:
        with self._lock:
            return self._users.get(login)

    def users(self) -> list[User]:
        with self._lock:
            return list(self._users.values())

    def check_password(self, login: str, password: str) -> User | None:
        """The user for a login/password or alias/secret pair, ``None`` when they do not match."""
        with self._lock:
            user = self._users.get(login)
            if user is not None and secrets.compare_digest(user.password, password):
                return user
            token = self._tokens.get(login)
            if (
                token is not None
                and secrets.compare_digest(token.secret, password)
                and token.expires_ms > time.time() * 1000
            ):
                return self._users.get(token.login)
            return None

    # -- JSESSION ------------------------------------------------------------------------------------
    def open_session(self, user: User) -> str:
        session_id = secrets.token_hex(16).upper()
        with self._lock:
            self._sessions[session_id] = user.login
        return session_id

    def session_user(self, session_id: str) -> User | None:
        with self._lock:
            login = self._sessions.get(session_id)
            return self._users.get(login) if login is not None else None

    def close_session(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def expire_sessions(self) -> int:
        """Forget every JSESSION (as a server restart or session timeout does); returns how many."""
        with self._lock:
            count = len(self._sessions)
            self._sessions.clear()
            return count

    # -- alias tokens --------------------------------------------------------------------------------
    def issue_token(self, user: User) -> AliasToken:
        now_ms = int(time.time() * 1000)
        with self._lock:
            token = AliasToken(
                alias=str(uuid.uuid4()),
                secret=secrets.token_urlsafe(48),
                login=user.login,
                created_ms=now_ms,
                expires_ms=now_ms + TOKEN_LIFETIME_SECONDS * 1000,
                token_id=len(self._tokens) + 1,
            )
            self._tokens[token.alias] = token
            return token

    def token(self, alias: str, secret: str) -> AliasToken | None:
        with self._lock:
            token = self._tokens.get(alias)
            if token is None or not secrets.compare_digest(token.secret, secret):
                return None
            return token

    def invalidate_token(self, alias: str, secret: str) -> bool:
        with self._lock:
            token = self._tokens.get(alias)
            if token is None or not secrets.compare_digest(token.secret, secret):
                return False
            del self._tokens[alias]
            return True
