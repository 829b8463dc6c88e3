"""The ``pgmgr`` command: the root Typer app, and the one place errors become exit codes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from pgmgr import __version__, ui
from pgmgr.commands import (
    branch,
    cache,
    destroy,
    env,
    export,
    forget,
    import_,
    init,
    logs,
    promote,
    psql,
    reload,
    replica,
    restart,
    restore,
    run,
    service,
    snapshot,
    start,
    status,
    stop,
    upgrade,
    url,
    versions,
)
from pgmgr.core.errors import EXIT_USAGE
from pgmgr.entry import guarded


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past Typer, which would turn it into a silent exit
    130; :func:`pgmgr.entry.guarded` says "Interrupted" for it, as on the fast path."""


class PgmgrGroup(TyperGroup):
    """Turns every expected error into ``Error: <one line>`` and its exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
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
        except _Interrupted:
            raise KeyboardInterrupt from None
        except typer.Exit as e:
            return int(e.exit_code or 0)
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
                    sys.stderr.write(text.rstrip("\n") + "\n")
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


app.command("init")(init.init)
app.command("start")(start.start)
app.command("stop")(stop.stop)
app.command("status")(status.status)
app.command("versions")(versions.versions)
app.command("restart")(restart.restart)
app.command("reload")(reload.reload)
app.command("logs")(logs.logs)
app.command("env")(env.env)
app.command("url")(url.url)
_PASSTHROUGH = {"allow_interspersed_args": False, "ignore_unknown_options": True}
app.command("psql", context_settings=_PASSTHROUGH)(psql.psql)
app.command("run", context_settings=_PASSTHROUGH)(run.run)
app.command("destroy")(destroy.destroy)
app.command("forget")(forget.forget)
app.command("replica")(replica.replica)
app.command("promote")(promote.promote)
app.command("export")(export.export)
app.command("import")(import_.import_)
app.command("snapshot")(snapshot.snapshot)
app.command("snapshots")(snapshot.snapshots)
app.command("restore")(restore.restore)
app.command("branch")(branch.branch)
app.command("upgrade")(upgrade.upgrade)
app.add_typer(cache.app, name="cache")
app.add_typer(service.app, name="service")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="pgmgr")
