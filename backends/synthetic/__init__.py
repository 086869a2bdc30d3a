"""The synthetic engine: known timing, to test the harness client's measurement (engine.py)."""
