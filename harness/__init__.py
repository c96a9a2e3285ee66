"""histo-harness: benchmark and hyperparameter-search harness for breast-cancer histopathology."""

__version__ = "0.1.0"
