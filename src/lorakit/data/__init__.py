"""The data pipeline: sources -> cleaners -> grouped split -> template -> tokens.

Nothing here imports a model; tokenisation takes any Hugging Face tokenizer.
"""
