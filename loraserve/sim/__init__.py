"""Trace-driven simulation of a vLLM-like fleet serving a placement plan."""
