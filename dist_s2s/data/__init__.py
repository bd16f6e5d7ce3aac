"""Raw parallel text → vocabularies and length-bucketed Arrow shards → batches.

`prepare` (Ray) writes the shards and manifest; `loader` reads them for training.
"""
