"""TFX custom components of latentforge: each a package with component.py (spec) and executor.py (Do)."""
