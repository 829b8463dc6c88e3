"""One module per subcommand: gather options, call core, render."""
