"""Instance records under the state directory.

One JSON file per instance (``<state>/instances/<name>.json``, mode 0600, written atomically).
The lock per data directory is :mod:`pgmgr.core.dirlock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import dirlock, diskio, paths, recordcheck
from pgmgr.core.errors import InstanceNotFound, PgmgrError, UsageError, doing
from pgmgr.core.lazyre import LazyRegex

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

NAME_RE = LazyRegex(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")  # \Z: "$" lets "x\n" pass


@dataclass
class Instance:
    """What pgmgr records about one data directory."""

    name: str
    datadir: str
    major: str
    version: str
    bindir: str
    host: str = "127.0.0.1"
    port: int | None = None
    socket_dir: str | None = None
    log_file: str | None = None
    server_user: str | None = None  # OS user that runs postgres when pgmgr runs as root
    superuser: str = "postgres"
    password: str | None = None
    auth: str = "scram-sha-256"
    settings: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    started_at: float | None = None
    created_at: float = field(default_factory=time.time)
    password_pending: bool = False  # set on first start (template copies share the catalog)
    password_reset: bool = False  # pending for a re-registered data dir: failing only warns
    # The data directory's identity (see pgmgr.core.identity): device, inode, and the system
    # identifier of global/pg_control; None in records older than it, filled in later.
    dev: int | None = None
    ino: int | None = None
    system_id: int | None = None
    # A streaming standby (pgmgr replica): its primary's name, and the slot and replication
    # role (with its generated password) it uses there.
    primary: str | None = None
    slot: str | None = None
    repl_role: str | None = None
    repl_password: str | None = None
    #: A command that builds an instance in several steps ("import", "replica") registers
    #: it first with this mark and clears it last: a record that still has it is a build
    #: that was interrupted (or still runs). ``pending_from`` names what it was built from
    #: (the bundle's path, the primary's name), so a retry of the same command knows it.
    pending: str | None = None
    pending_from: str | None = None
    #: "cli" (made on purpose with pgmgr init/start) or "library" (registered on the side
    #: by a pgmgr.Manager): a library record whose data directory is gone is pruned.
    origin: str = "cli"
    #: A switch of the data directory under way (upgrade, restore): see pgmgr.core.intent.
    #: Settled by the next load when the command that wrote it is gone.
    intent: dict[str, Any] | None = None
    #: The running server was stopped by a pgmgr command that starts it again when its
    #: work is done (snapshot, restore, branch, upgrade, restart): see pgmgr.core.stopmark.
    #: Cleared by that start, by any start, and by 'pgmgr stop'.
    stopped_by: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return Path(self.datadir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        """The record in ``data`` (unknown keys ignored).

        :raises ValueError: a required key is missing or a value has the wrong type.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError("missing " + ", ".join(repr(k) for k in missing))
        recordcheck.check_types(values)
        return cls(**values)


class CorruptRecord(PgmgrError):
    """An instance record that cannot be used. ``directory``: it is a directory, which
    pgmgr never makes there and does not remove ('pgmgr forget' removes any other)."""

    def __init__(self, path: Path, why: str, *, directory: bool = False) -> None:
        self.path = path
        self.why = why
        self.directory = directory
        again = "register the data directory again with 'pgmgr init -d DIR'"
        if directory:
            hint = f"see what it holds and remove it yourself (rm -r {path}), then {again}"
        else:
            hint = f"remove it with 'pgmgr forget {path.stem}' and {again}"
        super().__init__(f"instance record {path} is unreadable ({why})", hint=hint)


def instances_dir() -> Path:
    return paths.state_dir() / "instances"


def record_path(name: str) -> Path:
    return instances_dir() / f"{name}.json"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid instance name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 63, starting with a letter or digit)"
        )
    return name


#: A record is a few hundred bytes; anything much larger is not one.
MAX_RECORD = 1 << 20


def load(name: str, *, settle: bool = True) -> Instance:
    """The record called ``name``; its name is its file's name, whatever the file says.
    A switch of its data directory that a killed command left half-done is settled first
    (unless ``settle`` is False: see :mod:`pgmgr.core.intent`), so is a branch killed
    half-way (:mod:`pgmgr.core.branchplace`).

    :raises InstanceNotFound: no such record.
    :raises CorruptRecord: the file is not a valid record (not UTF-8, not JSON, nested too
        deep, wrong types, a NUL or line break in a path...).
    """
    path = record_path(check_name(name))
    try:
        raw = _read_regular(path)
    except FileNotFoundError:
        raise InstanceNotFound(
            f"no instance named {name!r}", hint="'pgmgr status' lists the known instances"
        ) from None
    except IsADirectoryError:
        raise CorruptRecord(path, "a directory, not a file", directory=True) from None
    except OSError as e:
        raise CorruptRecord(path, _why_unreadable(e, path)) from None
    try:
        data = json.loads(raw.decode())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data["name"] = name
        inst = Instance.from_dict(data)
        _check_paths(inst)
        if inst.intent is not None:
            from pgmgr.core import intent

            intent.Intent.from_dict(inst.intent)  # a corrupt one makes a corrupt record
            if settle:
                inst = intent.settle(inst)
        if inst.pending == "branch" and settle:  # a branch killed half-way: see branchplace
            from pgmgr.core import branchplace

            settled = branchplace.settle(inst)
            if settled is None:
                return load(name)  # undone: no such record any more
            inst = settled
        return inst
    except UnicodeDecodeError:
        raise CorruptRecord(path, "not UTF-8 text") from None
    except RecursionError:
        raise CorruptRecord(path, "nested too deep") from None
    except (ValueError, TypeError) as e:
        raise CorruptRecord(path, str(e)) from None


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file (never a FIFO, device or symlink), at most MAX_RECORD.

    :raises OSError: cannot be read, not a regular file, or too large.
    """
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a special file"
            raise OSError(errno.EINVAL, f"{kind}, not a regular file")
        if st.st_size > MAX_RECORD:
            raise OSError(errno.EFBIG, f"larger than {MAX_RECORD} bytes")
        chunks = []
        while chunk := os.read(fd, MAX_RECORD + 1):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _why_unreadable(err: OSError, path: Path) -> str:
    """What is wrong with a record file that could not be read, in words (not errno's
    text alone: "Too many levels of symbolic links" is how a symlink refused shows, "No
    such device or address" a socket)."""
    import errno
    import stat

    if err.errno == errno.ELOOP:
        return "a symbolic link, not a regular file"
    if err.errno == errno.ENXIO:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                return "a socket, not a regular file"
        return "a special file, not a regular file"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def _check_paths(inst: Instance) -> None:
    """:raises ValueError: a string holds a NUL, or a path is relative or holds a line break."""
    for key, value in inst.to_dict().items():
        if isinstance(value, str) and "\0" in value:
            raise ValueError(f"{key!r} holds a NUL character")
    for key in ("datadir", "bindir", "socket_dir", "log_file"):
        value = getattr(inst, key)
        if value is None:
            continue
        if not value.startswith("/"):
            raise ValueError(f"{key!r} is not an absolute path")
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key!r} holds a line break")
    if inst.settings and any("\0" in k + v for k, v in inst.settings.items()):
        raise ValueError("'settings' holds a NUL character")


#: How old a record's temporary file (``.NAME.json.<random>``) is when it is left by a killed
#: write: a live one is renamed within milliseconds.
TEMP_AGE = 600.0


def save(inst: Instance) -> None:
    """Rewrite the record of an instance already registered (see :func:`create`)."""
    paths.write_json_atomic(record_path(check_name(inst.name)), inst.to_dict())
    _synced()
    _sweep_temps()


def _sweep_temps() -> None:
    """Remove the temporary files of record writes killed before their rename (kill -9):
    nothing else did, and they piled up in the instances directory, one per such kill.
    One listdir when there are none."""
    try:
        temps = [n for n in os.listdir(instances_dir()) if n.startswith(".") and ".json." in n]
    except OSError:
        return
    now = time.time()
    for name in temps:
        with contextlib.suppress(OSError):
            if now - os.stat(instances_dir() / name, follow_symlinks=False).st_mtime > TEMP_AGE:
                os.unlink(instances_dir() / name)


def _synced() -> None:
    """The instances directory fsynced: a record created, rewritten or removed is on disk
    before what depends on it (a swap or a branch's rename, on another filesystem, that
    the record must pin after a power cut; a destroy or an init said done)."""
    diskio.fsync_dir(instances_dir())


@contextlib.contextmanager
def registry_lock(timeout: float = 30.0) -> Iterator[None]:
    """Hold the one lock under which names are allocated and records created."""
    lockdir = paths.ensure_private_dir(paths.state_dir() / "locks")
    with paths.flocked(
        lockdir / "registry.lock",
        exclusive=True,
        timeout=timeout,
        busy="another pgmgr is registering an instance",
    ):
        yield


def _same_directory(recorded: Instance, new: Instance) -> None:
    """A record found for a new registration is adopted only when both pin the same
    directory (a swapped path must not hand a user another user's instance).

    :raises PgmgrError: they pin different directories.
    """
    pins = [(r.dev, r.ino, r.system_id) for r in (recorded, new)]
    if None in pins[0] or None in pins[1] or pins[0] == pins[1]:
        return
    raise PgmgrError(
        f"{new.datadir} is not the data directory instance '{recorded.name}' was made for "
        "(it was moved or replaced meanwhile); nothing was registered",
        hint=f"check {new.datadir}, and 'pgmgr status {recorded.name}'",
    )


def create(inst: Instance, *, name_base: str | None = None) -> Instance:
    """Register ``inst``: under :func:`registry_lock`, its record file is created exclusively,
    so two processes never get one name nor overwrite each other's record.

    With ``name_base`` (a generated name), a free name derived from it replaces a taken one;
    without, a taken name is refused. A record of the same data directory made meanwhile by
    another process wins: it is returned instead, and nothing is written.

    :raises UsageError: the chosen name is taken by another data directory.
    """
    with registry_lock():
        other = find_by_datadir(Path(inst.datadir))
        if other is not None:
            _same_directory(other, inst)
            return other
        if name_base is not None:
            inst.name = unique_name(name_base)
        path = record_path(check_name(inst.name))
        text = json.dumps(inst.to_dict(), indent=2, sort_keys=True) + "\n"
        try:
            _write_exclusive(path, text.encode())
        except FileExistsError:
            raise UsageError(
                f"instance name {inst.name!r} is already used", hint="choose another --name"
            ) from None
    return inst


def _write_exclusive(path: Path, data: bytes) -> None:
    """Write ``path`` whole (temp file, fsync, then ``link``): it never existed half-written,
    and an existing file is never replaced.

    :raises FileExistsError: ``path`` exists.
    """
    import tempfile

    paths.ensure_private_dir(path.parent)
    with doing("create the temporary file"):  # it names the new file, not its directory
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with doing("write", path), os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        _synced()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove(name: str) -> bool:
    try:
        record_path(check_name(name)).unlink()
    except FileNotFoundError:
        return False
    _synced()
    return True


def names() -> list[str]:
    """The registered names; none while the instances directory does not exist.

    :raises OSError: it cannot be listed (no permission, not a directory): 'pgmgr status'
        said "No instances" then, and a new record's free name was picked blind.
    """
    try:
        with doing("list"):
            entries = os.listdir(instances_dir())
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in entries if n.endswith(".json") and len(n) > 5)


def load_all() -> tuple[list[Instance], list[CorruptRecord]]:
    """Every readable record, and the errors of the unreadable ones."""
    good: list[Instance] = []
    bad: list[CorruptRecord] = []
    for name in names():
        try:
            good.append(load(name))
        except CorruptRecord as e:
            bad.append(e)
        except (InstanceNotFound, UsageError):
            continue
    return good, bad


def prune_vanished(instances: list[Instance]) -> list[Instance]:
    """Forget the library-made instances (``origin == "library"``) whose data directory is
    gone, with their default log file; returns the others.

    A :class:`pgmgr.Manager` registers every data directory it opens, often a throw-away one
    (a test's temporary directory): once that directory is gone, nothing is left to manage
    or lose, and its record would clutter ``pgmgr status`` forever. Instances made with the
    CLI stay listed as ``missing`` instead: the user made them on purpose, and a directory
    may only be missing for a while (an unmounted disk).
    """
    kept: list[Instance] = []
    for inst in instances:
        if inst.origin != "library" or os.path.lexists(inst.datadir):
            kept.append(inst)
            continue
        with dirlock.lock(Path(inst.datadir)):
            if os.path.lexists(inst.datadir):  # made again meanwhile
                kept.append(inst)
                continue
            remove(inst.name)
            from pgmgr.core import logfile

            for log in logfile.all_files(paths.state_dir() / "logs" / f"{inst.name}.log"):
                with contextlib.suppress(OSError):
                    log.unlink()
    return kept


def find_by_datadir(datadir: Path) -> Instance | None:
    wanted = canonical(datadir)
    for inst in load_all()[0]:
        if inst.datadir == wanted or canonical(inst.datadir) == wanted:
            return inst
    return None


def canonical(path: str | Path) -> str:
    """The path a record is compared by: its realpath, except, as root, when another user
    can change what the path names. Then the path as written: following that user's
    symlinks would let them point pgmgr at another user's registered instance."""
    lexical = os.path.abspath(path)
    if os.geteuid() == 0:
        from pgmgr.core import userfs

        if userfs.others_can_write(lexical):
            return lexical
    return os.path.realpath(lexical)


def unique_name(base: str) -> str:
    """A free record name derived from ``base`` (a data dir's basename, say)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "pg"
    if not cleaned[0].isalnum():
        cleaned = "pg" + cleaned
    cleaned = cleaned[:56]
    taken = set(names())
    if cleaned not in taken:
        return cleaned
    for i in range(2, 10_000):
        candidate = f"{cleaned}-{i}"
        if candidate not in taken:
            return candidate
    raise PgmgrError(f"too many instances named like {base!r}")  # pragma: no cover
