"""One module per ``fimbound`` subcommand; see :mod:`numeric.cli` for the protocol."""
