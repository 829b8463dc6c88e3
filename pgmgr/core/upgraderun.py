"""Running pg_upgrade for :mod:`pgmgr.core.upgrade`: its working directory and private
socket directory (made and removed as the server user, swept once a killed run is gone),
the run itself (watched for a FIFO that would hang it, under the subreaper), its failure
turned into one message with its logs kept under the state directory, and the undo of what
a failed ``--link`` run did to the old cluster; the extension script it writes, kept.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

from pgmgr.core import fifowait, intent, paths, server, snapstore, testhook, tools
from pgmgr.core import upgradeplan as plan
from pgmgr.core.errors import CommandFailed, DatabaseException

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server
    from pgmgr.core.snapstore import Store
    from pgmgr.core.upgrade import UpgradeResult
    from pgmgr.core.versions import Installation


def mkdirs(work: Path, owner: int, base: str) -> str:
    """The work directory, and a short private socket dir under ``base``
    (:func:`sockets.temp_base_for`), named after the pgmgr process ``owner``
    (``pgmgr-up-<pid>-*``: once that process is gone, a killed upgrade's is swept, see
    :mod:`pgmgr.core.sweep`). As the user."""
    import tempfile

    os.mkdir(work, 0o700)
    testhook.pause("upgrade-workdir")
    try:
        return tempfile.mkdtemp(prefix=f"pgmgr-up-{owner}-", dir=base)
    except OSError as e:
        os.rmdir(work)
        raise DatabaseException(
            f"cannot create pg_upgrade's socket directory in {base}: "
            f"{e.strerror}; nothing was changed",
            hint="the server user must be able to write in the temporary directory "
            "(TMPDIR chooses another)",
        ) from None


def remove_socket_dir(path: str) -> None:
    snapstore.remove_tree(Path(path))


def read_logs(work: Path) -> str:
    """pg_upgrade's logs under ``work`` (its cwd and the new cluster's output dir): regular
    files only, never a FIFO (the open blocked for ever) nor a symlink. As the user."""
    parts = []
    for root, _dirs, files in os.walk(work):
        if os.path.basename(root) == "base":
            continue
        for name in sorted(files):
            path = os.path.join(root, name)
            if not name.endswith((".log", ".txt")):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    text = f.read(1 << 20).decode(errors="replace")
                    parts.append(f"==> {path} <==\n{text}")
    return "\n".join(parts)


def keep_logs(srv: Server, store: Store, work: Path) -> tuple[Path, str]:
    """pg_upgrade's logs, kept under the state directory: where, and their text."""
    text = store.as_user(read_logs, work)
    log = paths.state_dir() / "logs" / f"{srv.inst.name}-upgrade-{int(time.time())}.log"
    paths.write_atomic(log, text.encode(), mode=0o600)
    return log, text


def run_pg_upgrade(
    srv: Server, store: Store, old: Installation, new: Installation, newdata: Path,
    work: Path, sockdir: str, method: str, check: bool,
) -> None:  # fmt: skip
    """Run pg_upgrade (``check``: ``--check`` only) from ``work``, its working directory,
    on the old data directory and ``newdata``, with ``sockdir`` for its servers' sockets.
    A failure keeps its logs under the state directory and enables again an old cluster
    that ``--link`` disabled.

    :raises DatabaseException: pg_upgrade failed, or hung on a FIFO (then stopped).
    """
    pf = srv.running()
    free = server.free_port("127.0.0.1")
    old_port = pf.port if (pf and pf.port) else free
    args = plan.UpgradeArgs(
        old, new, srv.datadir, newdata, srv.inst.superuser, old_port,
        server.free_port("127.0.0.1") if old_port == free else free, sockdir, method, check,
    )  # fmt: skip
    try:
        # pg_ctl puts the servers pg_upgrade starts in sessions of their own, a postmaster
        # it has just forked not yet findable through its postmaster.pid: under the
        # subreaper none of them outlives pg_upgrade (interrupted, it stops them all), so
        # the old cluster is as the caller's pause left it, and nothing runs on the new one.
        # A FIFO swapped in for a configuration file after the checks hung it for ever
        # (its postgres -C, or a server its pg_ctl started): the watch ends that.
        watch = fifowait.watchdog()
        tools.run(plan.pg_upgrade_argv(args), srv.user(), cwd=work, reap=True, watch=watch)
    except tools.Stuck as e:
        log, _ = keep_logs(srv, store, work)
        undo_link(srv, store, method)
        raise DatabaseException(
            f"pg_upgrade failed: {e}; nothing was changed",
            hint=f"put the regular file back; pg_upgrade's logs are kept in {log}",
        ) from None
    except CommandFailed as e:
        log, text = keep_logs(srv, store, work)
        undo_link(srv, store, method)
        reason = plan.failure_reason(e.stderr, text, e.returncode)
        hint = f"pg_upgrade's logs are kept in {log}"
        if method == "clone" and "could not clone" in reason:
            hint = f"this filesystem has no reflinks: use --method copy or link ({hint})"
        raise DatabaseException(
            f"pg_upgrade failed: {reason}; nothing was changed", hint=hint
        ) from None
    except BaseException:
        undo_link(srv, store, method)  # interrupted past --link's rename of pg_control
        raise


def undo_link(srv: Server, store: Store, method: str) -> None:
    """A failed ``--link`` upgrade may have disabled the old cluster: enable it again."""
    if method == "link":
        store.as_user(intent.undo_link, srv.datadir)


def keep_extension_script(srv: Server, result: UpgradeResult, script: str | None) -> None:
    """Name in ``result`` the extensions pg_upgrade's ``script`` updates, and keep it under
    the state directory (it was written in the working directory, which goes)."""
    if not script:
        return
    result.extensions = plan.extension_updates(script)
    path = paths.state_dir() / "logs" / f"{srv.inst.name}-update-extensions-{int(time.time())}.sql"
    with contextlib.suppress(OSError):  # the upgrade is complete: the names still say it
        paths.write_atomic(path, script.encode(), mode=0o600)
        result.extensions_script = str(path)
