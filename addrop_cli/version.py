"""The package version, importable without anything else of the package."""

__version__ = "0.1.0"
