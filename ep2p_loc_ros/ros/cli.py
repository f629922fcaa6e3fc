"""Subcommands of this module: scaffold until its issue lands (see cli.SUBCOMMAND_MODULES)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Nothing registered yet."""
