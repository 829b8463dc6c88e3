"""pgmgr's zsh completion script (``completions/_pgmgr``, ``pgmgr --install-completion``).

Typer's script, loaded from ``$fpath`` by the first Tab of a new shell, only registered its
function with ``compdef`` then: that Tab completed nothing, the next ones did. This one also
completes on that first Tab (``loadautofunc``: it is being autoloaded), as Click's does.
"""

from __future__ import annotations

ZSH = """
#compdef %(prog_name)s

%(complete_func)s() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" \\
    %(autocomplete_var)s=complete_zsh %(prog_name)s)
}

compdef %(complete_func)s %(prog_name)s
# autoloaded from $fpath by a Tab: complete that Tab too, not only the next ones
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  %(complete_func)s "$@"
fi
"""


def install() -> None:
    """Make Typer's ``--show-completion``/``--install-completion`` (and
    ``completions/generate.py``) use :data:`ZSH`."""
    from typer import _completion_shared

    _completion_shared._completion_scripts["zsh"] = ZSH
