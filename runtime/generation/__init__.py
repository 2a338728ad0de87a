"""Generation: the token loop (generate.py), sampling (sampling.py) and tokenizers (tokenizer.py)."""
