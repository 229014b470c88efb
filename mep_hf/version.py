"""mep_hf's version, in a module of its own: ``mep_hf.hub`` reads it without importing the package root."""

__version__ = "0.1.0"
