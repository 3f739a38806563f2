"""Inference engines Parrot builds and runs as child processes (llama.cpp's llama-server)."""
