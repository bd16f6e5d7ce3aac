"""Left-to-right beam search with ensembles, translation of text, n-best rescoring."""
