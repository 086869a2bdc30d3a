"""llama.cpp's stock llama-server as an engine (kind `llama-server`): what llama.cpp users serve."""
