"""The sections of scripts/bench.py, one module each (see that script for the options)."""
