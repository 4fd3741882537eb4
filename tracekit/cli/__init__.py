"""Command-line interface (click). The only place click and rich are imported."""
