"""Evaluation: answer-only loss and perplexity (more metrics arrive as plugins)."""
