"""The paper's pipeline schedule (§3.5), a wavefront over time with the batch kept whole.

`program.py`: the step as a fixed program of operations, the same on every rank; `operations.py`: what
each operation computes on a stage; `messages.py`: the messages between stages as NCCL can run them;
`transport.py`: the same messages in one process; `engine.py`: DeepSpeed's pipeline engine running the
program; `steps.py`: the training loop's `Steps` of one rank.
"""
