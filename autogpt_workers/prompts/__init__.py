"""Prompt templates as data (``*.yaml``), read by ``agent.prompt.load_prompt``."""
