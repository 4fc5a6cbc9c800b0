"""The ``transfer`` command."""
