"""pgmgr's core: all the work, no CLI dependencies (neither typer nor rich)."""
