"""What is built on the library to measure it: the DPO-vs-RLHF comparison and the speed and memory benchmarks.

Nothing in the library imports these; they may be deleted without touching it.
"""
