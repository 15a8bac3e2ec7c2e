"""The vLLM simulator as a package; `tests/fakevllm/fakevllm.py` is its entry point
(see `tests/fakevllm/README.md` for the names tests rely on)."""
