"""The ``falco`` command line (:mod:`falco.cli.root`): ``app`` and the console-script entry point ``main``."""

from falco.cli.root import app, main

__all__ = ["app", "main"]
