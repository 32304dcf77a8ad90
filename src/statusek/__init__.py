"""statusek: the neutral record of which task is done, failed or stuck."""

__version__ = "0.1.0"
