"""Storage URLs for many workers, on Optuna's storages (nothing re-implemented here).

==========================================  ==========================================================
``None``                                    in memory, one process
``sqlite:///path/study.db``                 ``RDBStorage``: processes on one machine
``postgresql://user:pw@host:5432/db``       ``RDBStorage`` (psycopg 3): workers on many machines
``mysql+pymysql://...``                     ``RDBStorage`` (any SQLAlchemy URL works)
``journal:///path/study.log``               ``JournalStorage(JournalFileBackend)``: one shared file
``path/study.log`` / ``.journal``           the same
==========================================  ==========================================================

RDB storages get a heartbeat: a worker that dies mid-trial (SIGKILL, lost machine) stops beating, and the next
worker to start a trial marks the stale trial ``FAIL`` after ``grace_period`` seconds;
``RetryHeartbeatStaleTrialCallback`` then enqueues it once more with the same parameters. Journal storages have
no heartbeat in Optuna: a dead worker's trial stays ``RUNNING``, and since workers count running trials towards
the shared budget the study ends one trial short; rerunning a worker does not fix that either, so prefer an RDB
storage where workers may die.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna

_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


class StorageUnreachableError(ConnectionError):
    """The storage URL is well-formed but the database cannot be opened, read or written (a one-line reason,
    no traceback)."""


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def _journal(url: str) -> Any:
    """A journal-file storage (``journal:///abs/path`` or a path ending in ``.log``/``.journal``)."""
    from optuna.storages.journal import JournalFileBackend

    path = url[len("journal://") :] if url.startswith("journal://") else url
    path = path[1:] if path.startswith("//") else path  # journal:///abs/path -> /abs/path
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    except OSError as exc:
        raise StorageUnreachableError(f"journal storage {path!r} cannot be opened: {exc.strerror or exc}") from None


def _rdb_url(storage: str) -> tuple[str, str]:
    """``(SQLAlchemy URL, scheme)`` of a database URL; PostgreSQL goes through psycopg 3 (the `postgres` extra)."""
    url = storage
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _RDB_SCHEMES or "://" not in url:
        raise ValueError(
            f"`storage` {redact(url)!r} is not a storage URL; allowed: None (in memory), "
            "'sqlite:///file.db', 'postgresql://user:pw@host:port/db', 'journal:///file.log'"
        )
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres") :]
    if scheme.startswith("postgres"):
        if url.startswith("postgresql://"):
            # psycopg 3 by name: SQLAlchemy < 2.1 would pick psycopg2 for a bare URL
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        if url.startswith("postgresql+psycopg://"):
            from lightning_nas._optional import require

            require("psycopg", extra="postgres", feature=f"storage {redact(storage)!r}")
    return url, scheme


def open_storage(
    storage: Any, heartbeat_interval: int | None = 60, grace_period: int | None = None, max_retry: int = 1
) -> Any:
    """Turn a URL (or an Optuna storage, or ``None``) into an Optuna storage; fail with one clear line.

    Examples:
        >>> import os
        >>> import tempfile
        >>> from lightning_nas.search.multitrial import open_storage
        >>> open_storage(None) is None  # in memory: Optuna's default
        True
        >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "study.db")
        >>> type(open_storage(url)).__name__
        'RDBStorage'
    """
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not isinstance(storage, str) or not storage:
        raise ValueError(f"`storage` must be None, an Optuna storage or a URL string, got {storage!r}")
    if storage.startswith("journal://") or storage.endswith((".log", ".journal")):
        return _journal(storage)
    url, scheme = _rdb_url(storage)
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": retry,
        }
    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if scheme.startswith("postgres") else None
    try:
        # Workers started together on a fresh database race to create its tables; the loser sees "already
        # exists" or "UNIQUE constraint failed" (SQLite) or a unique violation (PostgreSQL). Tables are there by
        # then: try again.
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            except Exception as exc:
                text = str(getattr(exc, "orig", None) or exc)
                if attempt == 4 or not any(m in text for m in ("already exists", "duplicate key", "UNIQUE constraint")):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError as exc:
        raise StorageUnreachableError(
            f"storage {redact(url)!r} needs a database driver that is not installed: {exc}"
        ) from None
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StorageUnreachableError(
            f"storage {redact(url)!r} is unreachable: {reason[0] if reason else type(exc).__name__}"
        ) from None


_STORAGE_CODE = os.path.dirname(optuna.storages.__file__)


def describe(storage: Any) -> str:
    """How a storage is named in messages: the URL without its password, else the storage's type."""
    return repr(redact(storage)) if isinstance(storage, str) else type(storage).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (``__cause__``/``__context__``, and SQLAlchemy's ``orig``)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
        if not isinstance(nxt, BaseException):
            break
        exc = nxt
    return exc


def _raised_in_storage(exc: BaseException) -> bool:
    """Whether ``exc`` came out of Optuna's storage code (which never calls the user's build/datamodule code)."""
    tb = exc.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_STORAGE_CODE):
            return True
        tb = tb.tb_next
    return False


def _reason(exc: BaseException) -> str:
    root = _root_cause(exc)
    if isinstance(root, OSError) and root.strerror:
        text = f"{root.strerror}: {root.filename!r}" if root.filename else root.strerror
    else:
        text = (str(root).strip().splitlines() or [type(root).__name__])[0]
    if "readonly database" in text:
        text += " (the database file, or its folder, is read-only for this process)"
    elif isinstance(root, PermissionError):
        text += " (the file is read-only for this process)"
    return text[:300]


@contextmanager
def storage_errors(storage: Any) -> Iterator[None]:
    """Turn a storage failure inside the block (Optuna's StorageInternalError, a SQLAlchemy error, an OSError
    raised by Optuna's storage code, e.g. a read-only journal file) into one ``StorageUnreachableError`` line
    naming the real cause. Errors of the user's own code pass through unchanged."""
    try:
        yield
    except StorageUnreachableError:
        raise
    except optuna.exceptions.StorageInternalError as exc:
        raise StorageUnreachableError(f"storage {describe(storage)} failed: {_reason(exc)}") from None
    except OSError as exc:
        if not _raised_in_storage(exc):
            raise
        raise StorageUnreachableError(f"storage {describe(storage)} failed: {_reason(exc)}") from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "sqlalchemy":
            raise
        raise StorageUnreachableError(f"storage {describe(storage)} failed: {_reason(exc)}") from None
