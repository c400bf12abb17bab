"""Applies plans to live vLLM workers (client, reconciler, journal, router). Not built yet."""
