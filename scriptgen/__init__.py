"""scriptgen: learn network dialogs from captures, emulate them with Twisted."""

__version__ = "0.1.0"
