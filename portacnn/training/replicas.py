"""Where the work of a batch is done: the protocol ``fit`` / ``evaluate`` / ``predict`` ask.

The loop knows nothing of processes. It asks its ``replicas`` which rows of a batch this
process computes (``shard``) and to add up what the processes computed (``sum_gradients``,
``sum``, ``gather``) and, once an epoch where callbacks may end training, for rank 0's decision
(``from_root``). :data:`ONE_PROCESS`, the default, is this process alone;
:class:`portacnn.distributed.DataParallel` implements the same methods under MPI.
"""

from __future__ import annotations

__all__ = ["OneProcess", "ONE_PROCESS"]


class OneProcess:
    """The whole of every batch computed in this process: what ``fit`` / ``evaluate`` /
    ``predict`` do by default. :class:`portacnn.distributed.DataParallel` implements the same
    methods across processes."""

    is_root = True                 # this process prints
    size = 1                       # processes sharing each batch

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """The rows of the batch ``[start, stop)`` this process computes: all of them."""
        return start, stop

    def sum_gradients(self, parameters) -> None:
        """Add the other processes' shares of the batch gradient into each ``p.grad``: none."""

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes: the values themselves."""
        return list(values)

    def gather(self, part):
        """The outputs of every process's shard, in row order: this process's."""
        return part

    def from_root(self, value):
        """Rank 0's ``value`` (a small picklable object) on every process: this one's."""
        return value


ONE_PROCESS = OneProcess()
