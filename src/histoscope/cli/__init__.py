"""The ``histoscope`` command line: one module per subcommand, heavy imports inside commands."""
