"""`python -m motia` runs the CLI."""

from .cli import entry

entry()
