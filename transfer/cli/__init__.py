"""The ``transfer`` command: ``main`` assembles it, one module per subcommand (or family) beside it."""
