"""Online input: serialized examples (sources.py, dmvr.py) to batches (pipeline.py)."""
