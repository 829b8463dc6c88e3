"""The ``pgmgr`` command: the root Typer app, and the one place errors become exit codes.

Commands are built lazily: building all of them (Typer evaluates every parameter
annotation of every command) cost ~28 ms of each run, and importing their modules more,
for the one command that runs. :data:`COMMANDS` names them all, in the order ``--help``
lists them, with the line it shows for each; only the command invoked is imported and built.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, TextIO, cast

import typer
from typer.core import TyperCommand, TyperGroup

from pgmgr import __version__, ui, zshcomplete
from pgmgr.core.errors import EXIT_USAGE
from pgmgr.entry import guarded

#: name -> (module in pgmgr.commands, its function, or "app" for a Typer sub-app, and the
#: first paragraph of its help, line breaks kept: what ``pgmgr --help`` and shell
#: completion show, without building the command). tests/cli/test_lazy.py checks every
#: entry against the real command.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("init", "init", "Initialize a data directory and register it as an instance."),
    "start": ("start", "start",
        "Start a PostgreSQL instance and wait until it accepts connections."),
    "stop": ("stop", "stop", "Stop a PostgreSQL instance (a stopped one is left alone)."),
    "status": ("status", "status", "Show whether instances are running."),
    "versions": ("versions", "versions",
        "List installed PostgreSQL versions and which one is the default."),
    "restart": ("restart", "restart",
        "Restart an instance on its recorded host, port and settings (starts a stopped one)."),
    "reload": ("reload", "reload",
        "Send SIGHUP to the server and wait until it confirms (pg_conf_load_time advances)."),
    "logs": ("logs", "logs", "Print the end of the server log."),
    "env": ("env", "env", "Print PGHOST, PGPORT, PGUSER, PGDATABASE and PGDATA exports for eval."),
    "url": ("url", "url", "Print a postgresql:// URI that psql and psycopg accept as is."),
    "psql": ("psql", "psql",
        "Run the matching version's psql against the instance (its exit code passes through)."),
    "run": ("run", "run",
        "Run CMD with DATABASE_URL and PG* set for a temporary instance, then remove it."),
    "config": ("config", "config",
        "Show, set or remove the server settings pgmgr keeps for an instance."),
    "extensions": ("extensions", "extensions",
        "List the extensions the PostgreSQL binaries provide and, when the server runs,\n"
        "which are installed in which database."),
    "destroy": ("destroy", "destroy",
        "Stop an instance, delete its data directory, and forget it. Cannot be undone."),
    "forget": ("forget", "forget",
        "Remove the record of a stopped instance; the data directory stays where it is."),
    "replica": ("replica", "replica",
        "Create and start a streaming standby of SRC (pg_basebackup -R, a replication slot, a\n"
        "replication role allowed over loopback only). Its name is --name, else SRC-replica;\n"
        "its data directory -d DIR, else one of that name next to SRC's."),
    "promote": ("promote", "promote",
        "Promote a standby (made by 'pgmgr replica') to a primary that accepts writes; its\n"
        "slot, replication role and pg_hba.conf lines on the former primary are dropped."),
    "export": ("export", "export",
        "Write a bundle: globals (pg_dumpall --globals-only), each database (pg_dump\n"
        "directory format) and manifest.json. The instance must be running."),
    "import": ("import_", "import_",
        "Create and start an instance from a bundle, on the bundle's major version or a\n"
        "newer one (-v 18). Nothing is created if the bundle is incomplete or damaged, or the\n"
        "target binaries lack an extension it uses. Its name is --name, else the data\n"
        "directory's name."),
    "snapshot": ("snapshot", "snapshot",
        "Take a snapshot of an instance (a running one is stopped for the copy and started\n"
        "again, unless --online), or delete one with --delete."),
    "snapshots": ("snapshot", "snapshots",
        "List the snapshots of one instance, or of every instance."),
    "restore": ("restore", "restore",
        "Put an instance back to a snapshot; the current state is lost (unless\n"
        "--save-current). A running instance runs again afterwards."),
    "branch": ("branch", "branch",
        "Make a new, independent instance from NAME's current state (a running NAME is\n"
        "stopped for the copy) or from one of its snapshots: own name, data directory, port,\n"
        "socket and password. Started when NAME runs, or with --start. Its data directory\n"
        "is -d DIR, else NEW beside NAME's."),
    "upgrade": ("upgrade", "upgrade",
        "Upgrade an instance to a new PostgreSQL major with pg_upgrade. The old state is\n"
        "kept as a snapshot ('pgmgr restore NAME pre-upgrade-OLD' rolls back); a running\n"
        "instance runs again afterwards, on the new version, with fresh statistics."),
    "cache": ("cache", "app",
        "Show or clear the cached template data directories (they make 'init' fast)."),
    "service": ("service", "app",
        "Run an instance under systemd (Type=notify, restarted on failure)."),
}  # fmt: skip

#: psql and run hand their arguments, options included, to the program they run.
_PASSTHROUGH = {"allow_interspersed_args": False, "ignore_unknown_options": True}
_CONTEXT_SETTINGS: dict[str, dict[str, Any]] = {"psql": _PASSTHROUGH, "run": _PASSTHROUGH}


def build_command(name: str) -> Any:
    """Import and build command ``name`` (a click command, or group for a sub-app) exactly
    as Typer builds the commands registered on the root app."""
    module, attr, _ = COMMANDS[name]
    # __import__, not importlib.import_module: only the import statement's path is seen by
    # `python -X importtime`, with which these start-up costs are measured.
    mod = __import__(f"pgmgr.commands.{module}", fromlist=[attr])
    one = typer.Typer(
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
        suggest_commands=app.suggest_commands,
    )
    if attr == "app":
        one.add_typer(mod.app, name=name)
    else:
        one.command(name, context_settings=_CONTEXT_SETTINGS.get(name))(getattr(mod, attr))
    return typer.main.get_group(one).commands[name]


class _Commands(MutableMapping[str, Any]):
    """The root group's commands: every name known up front, each built on first use."""

    def __init__(self) -> None:
        self._names: dict[str, None] = dict.fromkeys(COMMANDS)
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._built:
            self._built[name] = build_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._names[name] = None
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._names[name]
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past Typer, which would turn it into a silent exit
    130; :func:`pgmgr.entry.guarded` says "Interrupted" for it, as on the fast path."""


class PgmgrGroup(TyperGroup):
    """Turns every expected error into ``Error: <one line>`` and its exit code; builds a
    command only when it runs (its help and completion list :data:`COMMANDS`' lines)."""

    #: List commands (help, completion) from :data:`COMMANDS` rather than by building
    #: each; tests turn it off to compare both.
    summaries = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        commands = _Commands()
        commands.update(self.commands)  # any registered on the app itself
        self.commands = commands
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # TyperGroup's walks .items(), which would build each

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if self._listing and self.summaries and cmd_name in COMMANDS:
            return TyperCommand(
                name=cmd_name, help=COMMANDS[cmd_name][2], rich_markup_mode=self.rich_markup_mode
            )
        return self.commands.get(cmd_name)

    @contextmanager
    def _list_only(self) -> Iterator[None]:
        """While help or completion lists the commands: a name and a line for each."""
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with self._list_only():
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> Any:
        with self._list_only():
            return super().shell_complete(ctx, incomplete)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            # keeps the failure it interrupted the clean-up of (see sigguard.redeliver)
            raise _Interrupted from e.__cause__

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        # Every command starts from the defaults: an earlier '-q' in this process (a test
        # or library caller running commands in-process) silenced the next one's messages.
        ui.settings.quiet = False
        code = run_guarded(
            lambda: super(PgmgrGroup, self).main(
                args=args,
                prog_name=prog_name or "pgmgr",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        )
        if standalone_mode:
            sys.exit(code)
        return code


def run_guarded(call: Any) -> int:
    """Run ``call``, mapping Typer's (click's) exceptions here and the rest in
    :func:`pgmgr.entry.guarded`, printing one error line."""

    def typer_aware() -> int | None:
        try:
            rv = call()
        except _Interrupted as e:
            raise KeyboardInterrupt from e.__cause__
        except typer.Exit as e:
            return int(e.exit_code or 0)
        except SystemExit as e:  # Typer's shell completion and --show-completion end so
            if e.code is None or isinstance(e.code, int):
                return e.code or 0  # and guarded says if their output was lost
            raise
        except typer.Abort:
            raise KeyboardInterrupt from None
        except typer.TyperException as e:  # click's usage errors (typer vendors click)
            hint = None
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                hint = f"see '{ctx.command_path} --help'"
            text = e.format_message() if hasattr(e, "format_message") else str(e)
            if type(e).__name__ == "NoArgsIsHelpError":
                # `pgmgr` or `pgmgr cache` alone: the help, as is, on stderr (Rich help has
                # printed itself already and left no text), and the usage exit code.
                if text.strip():
                    ui.write("stderr", text.rstrip("\n") + "\n")
                return EXIT_USAGE
            if not text.strip():
                return EXIT_USAGE
            ui.error(text, hint)
            code = getattr(e, "exit_code", EXIT_USAGE)
            return code if isinstance(code, int) else EXIT_USAGE
        return rv if isinstance(rv, int) else None

    return guarded(typer_aware)


def _version_callback(value: bool) -> None:
    if value:
        ui.emit(f"pgmgr {__version__}")
        raise typer.Exit()


class _ClickStdout:
    """What Click writes to stdout (help, completion scripts and candidates), sent through
    :func:`ui.write`: a stdout closed (``>&-``: Click printed nothing and the command exited
    0) or full (``>/dev/full``: the failure was said as "Error: No space left on device")
    is noted in :data:`ui.lost` and said at the end as for any command's output."""

    def write(self, text: str) -> int:
        ui.write("stdout", text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:  # Click keeps colors only on a terminal
        try:
            return sys.stdout is not None and sys.stdout.isatty()
        except (OSError, ValueError):
            return False


def _click_stdout_through_ui() -> None:
    """Every ``echo`` of Typer's Click to the default stdout finds its stream here (typer is
    pinned to 0.28: its vendored click looks the stream up at each call)."""
    from typer._click import utils

    stream = _ClickStdout()
    utils._default_text_stdout = lambda: cast(TextIO, stream)  # type: ignore[attr-defined]


_click_stdout_through_ui()
zshcomplete.install()

app = typer.Typer(
    cls=PgmgrGroup,
    name="pgmgr",
    help="Create, run and inspect local PostgreSQL servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Create, run and inspect local PostgreSQL servers.

    Example: pgmgr start -d ./data --init
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="pgmgr")
