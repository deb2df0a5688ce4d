"""Bifröst: realtime broadcasts from an application's server to its users' browsers."""

__version__ = "0.1.0"
