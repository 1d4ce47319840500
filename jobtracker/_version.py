"""The package version, in one place (the CLI, the client User-Agent and __init__ read it)."""

__version__ = "0.1.0"
