"""hyperbench: bench, tune and score LLM inference engines through one wire contract."""

__version__ = "0.1.0"
