"""Keeping credentials out of everything distrestore shows: reprs, error messages, plans and logs.

Storage options are shown with credential-like values replaced by ``***`` (keys whose name
contains key, secret, token, password, credential, auth, session, signature, private, cookie or
cert, at any depth of nested dicts), and every URL loses its user-info
(``https://user:pass@host`` -> ``https://***@host``). Free text (an error from a storage
library, a log record) is scrubbed of the secret values themselves, which
:func:`secret_values` collects from a set of storage options.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import deque
from collections.abc import Iterable, Mapping

MASK = "***"

_SECRET_NAME = re.compile(r"key|secret|token|passw|credential|auth|session|signature|private|cookie|cert", re.I)
# gcsfs ``token=`` modes: names of where credentials come from, not credentials
_TOKEN_MODES = frozenset({"anon", "google_default", "cache", "cloud", "browser"})
# scheme://user-info@ -- user-info never contains '/', so "s3://bucket/a@b" is left alone
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"<>]+@")
_MIN_SECRET_LEN = 4  # shorter strings would mask ordinary text (and are no real credential)


def redact_url(text: str) -> str:
    """``text`` with the user-info of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1" + MASK + "@", text) if "@" in text else text


def _is_secret_name(name) -> bool:
    return isinstance(name, str) and bool(_SECRET_NAME.search(name))


def _shown(value):
    return value is None or isinstance(value, bool) or (isinstance(value, str) and value in _TOKEN_MODES)


def redact_options(options: Mapping) -> dict:
    """A copy of ``options`` fit to show: credential-like values masked, URLs without user-info."""
    return {k: _redact_value(v, _is_secret_name(k)) for k, v in options.items()}


def _redact_value(value, secret: bool):
    if isinstance(value, Mapping):
        if secret:
            return {k: MASK for k in value}
        return redact_options(value)
    if secret and not _shown(value):
        return MASK
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v, secret) for v in value)
    return value


def secret_values(options: Mapping) -> set[str]:
    """Every credential string in ``options``: values under credential-like names (any depth, and
    every string inside a dict under such a name) and the user-info of URL values."""
    found: set[str] = set()
    _collect(options, False, found)
    return {s for s in found if len(s) >= _MIN_SECRET_LEN}


def _collect(value, secret: bool, found: set[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, secret or _is_secret_name(k), found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, secret, found)
    elif isinstance(value, str):
        if secret and value not in _TOKEN_MODES:
            found.add(value)
        for m in _USERINFO.finditer(value):
            info = m.group(0)[len(m.group(1)) : -1]
            found.add(info)
            found.update(part for part in info.split(":") if part)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` (longest first) and all URL user-info masked."""
    for s in sorted(secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    return redact_url(text)


class RedactedOptions(dict):
    """Storage options: a plain dict (pass it on with ``**``, compare, serialize) whose ``repr``
    and ``str`` mask credentials, so printing a storage or ``vars()`` of one shows none."""

    def __repr__(self) -> str:
        return repr(redact_options(self))

    __str__ = __repr__

    def __reduce__(self):  # pickles as a dict subclass holding its items
        return (type(self), (dict(self),))


# -- logs of the storage libraries ----------------------------------------------------------------

LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec", "gcsfs", "google", "urllib3", "aiohttp", "distrestore")
"""Loggers (and their children) whose records are scrubbed of known secrets."""

_MAX_SECRET_SETS = 64


class SecretFilter(logging.Filter):
    """Masks the secrets of the storages distrestore made (the last :data:`_MAX_SECRET_SETS`
    sets of options) and URL user-info in log records, message and traceback alike. It runs only
    for records a logger emits (at DEBUG, botocore logs request headers and endpoints)."""

    def __init__(self):
        super().__init__("distrestore-secrets")
        self._sets: deque[frozenset[str]] = deque(maxlen=_MAX_SECRET_SETS)
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str]) -> None:
        secrets = frozenset(secrets)
        with self._lock:
            if secrets and secrets not in self._sets:
                self._sets.append(secrets)
                self._secrets = frozenset().union(*self._sets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a record that does not format is left to the handler to report
            return True
        clean = redact_text(msg, self._secrets)
        if clean != msg:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)), self._secrets).rstrip()
        return True


SECRET_FILTER = SecretFilter()


def guard_logs(secrets: Iterable[str] = ()) -> None:
    """Register ``secrets`` and put the filter on every logger of :data:`LOGGERS` that exists now
    (a logger filter sees only the records of its own logger, so each one gets it)."""
    SECRET_FILTER.add(secrets)
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".", 1)[0] in LOGGERS]
    for name in {*names, *LOGGERS}:
        logger = logging.getLogger(name)
        if SECRET_FILTER not in logger.filters:
            logger.addFilter(SECRET_FILTER)
