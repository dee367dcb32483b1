"""Asynchronous predictive dialer."""

__version__ = "0.1.0"
