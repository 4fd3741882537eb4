"""The version of tracekit, in a module of its own so every layer can read it without importing the
package facade (``tracekit/__init__.py`` re-exports it)."""

__version__ = "0.1.0"
