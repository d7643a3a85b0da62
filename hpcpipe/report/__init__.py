"""``hpcpipe report``: what the jobs of a run, session, pipeline or time window really used.

``collect`` gathers one row per task from the store, the ledger and one batched ``sacct`` query
(local tasks: the engine's own measurement); ``table`` prints it; ``html`` writes a
self-contained page (timeline, graph coloured by status, efficiency, failures).
"""
