"""The Neural platform's Python client (`Client`) and the `neural` command line."""

from .client import Client
from .errors import MissingKeyError, NeuralError
from .run import Run

__all__ = ["Client", "MissingKeyError", "NeuralError", "Run"]
