"""Errors shared by the command line and the services."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from a person: says which field was wrong and what is allowed.

    The CLI prints it as one line and exits 2; nothing has been written.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")
