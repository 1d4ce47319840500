"""Named, expiring leases in the database: one poller (or downloader) at a time.

A lease row names its holder (``host:pid:token``) and an expiry. Taking it succeeds when no row
exists, the row has expired, its holder was a process on this host that no longer exists (killed),
or we already hold it; otherwise
:class:`LockHeld` names the holder. The caller runs these inside a write transaction, which is
serialised on both backends (``BEGIN IMMEDIATE`` / an advisory lock), so two processes can never
both see the lease free. A long run renews its lease as it goes.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, select, update

from jobtracker.errors import LockHeld
from jobtracker.schema import leases


def new_holder() -> str:
    """An identity for this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(holder: str) -> bool:
    """True when the holder ran on this host and its process no longer exists.

    Lets the next cron run take over at once after a poller was killed (SIGKILL, OOM) instead
    of waiting for the lease to expire; holders on other hosts are judged by expiry alone.
    """
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def holder_is_alive(holder: str) -> bool:
    """True when the holder is a process on this host (this one included) that still exists.

    Holders on other hosts cannot be checked: for them only the expiry counts.
    """
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return int(parts[1]) == os.getpid() or not holder_is_dead(holder)


def acquire(conn: Connection, name: str, holder: str, *, now: datetime, ttl: timedelta) -> None:
    """Take lease ``name`` for ``ttl``, or raise :class:`LockHeld` naming who holds it."""
    row = conn.execute(
        select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
    ).first()
    if row is None:
        conn.execute(
            leases.insert().values(name=name, holder=holder, acquired_at=now, expires_at=now + ttl)
        )
        return
    if row.holder != holder and row.expires_at > now and not holder_is_dead(row.holder):
        left = int((row.expires_at - now).total_seconds())
        raise LockHeld(
            f"another {name} run holds the lock: {row.holder} (lease expires in {left}s)",
            holder=row.holder,
        )
    conn.execute(
        update(leases)
        .where(leases.c.name == name)
        .values(holder=holder, acquired_at=now, expires_at=now + ttl)
    )


def renew(conn: Connection, name: str, holder: str, *, now: datetime, ttl: timedelta) -> None:
    """Extend our lease; raise :class:`LockHeld` if it expired and someone else took it."""
    done = conn.execute(
        update(leases)
        .where(leases.c.name == name, leases.c.holder == holder)
        .values(expires_at=now + ttl)
    )
    if done.rowcount != 1:
        raise LockHeld(f"lost the {name} lock (it expired and another process took it)")


def release(conn: Connection, name: str, holder: str) -> None:
    """Give the lease up (only if we still hold it)."""
    conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))
