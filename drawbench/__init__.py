"""drawbench."""
