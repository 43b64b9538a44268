"""overlay-agent: Talos-style system extensions for any Linux, stacked at early boot."""

__version__ = "0.1.0"
