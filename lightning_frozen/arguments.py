"""Command-line parsing for the tool subcommands: a mistake in the arguments is one line, not a page of usage.

argparse prints the whole usage before its one-line error; here the error is raised as a
``UsageError`` (a ``ValueError``), which `lightning-frozen` prints as one message with exit code 2,
naming the ``--help`` that lists the options.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

PROG = "lightning-frozen"


class UsageError(ValueError):
    """A command line that does not parse: what is wrong, and where the options are listed."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, raising ``UsageError`` instead of printing the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (`{self.prog} --help` lists the options)")
