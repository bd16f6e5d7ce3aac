"""Training throughput: words/s, FLOP/s and MFU of every way to run the model, measured in one run."""
