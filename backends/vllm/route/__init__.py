"""Code that runs inside vLLM's own server process (its interpreter, often another venv).

This folder, and only it, goes on that process's PYTHONPATH, so its modules import as top-level
names there and nothing of the harness environment leaks into vLLM's.
"""
