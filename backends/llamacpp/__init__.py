"""The llama.cpp engine (llama-cpp-python): GGUF conversion/quantization and an OpenAI-compatible
server with the additions the harness's wire contract needs."""
