"""The ``mediate`` command and its subcommands."""
