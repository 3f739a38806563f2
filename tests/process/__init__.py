"""Tests of real processes on loopback: parrot serve/up/data, llama-server, Prometheus, chromium, training runs."""
