"""dist-s2s: the Sutskever, Vinyals & Le (2014) seq2seq model, trained pipeline-parallel."""

__version__ = "0.1.0"
