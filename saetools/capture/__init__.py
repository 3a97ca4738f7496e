"""Record residual-stream activations at named sites, with streaming reducers.

Two layers of API:

* :func:`record` - a context manager that stores the raw activation of each site during any forward
  pass you run (hooks are removed on exit, even when the forward raises).
* :func:`capture` - runs chat examples through the model in length-sorted batches, stops the forward
  after the deepest site it needs, and reduces each example's activations on the fly
  (``response_mean``, ``last``, ``prompt_mean`` or ``all``) into running sums, keeping per-example
  vectors only when asked. With ``distributed=True`` the processes of a torch.distributed group
  share the examples and all end with the single-process result (:mod:`saetools.capture.sharded`).

The package's modules, in the order they build on each other:

* ``chat``: :class:`ChatExample`, the chat template and the answer's token span, padding (:func:`collate`);
* ``hooks``: :func:`record`, :func:`run_until` (early stop);
* ``reduce``: token aggregates, :class:`CaptureResult`, the batch loop;
* ``sharded``: data-parallel capture over a process group;
* ``collect``: :func:`capture`, the entry point.
"""

from ..callable_package import make_callable
from .chat import (
    IGNORE_INDEX,
    Batch,
    ChatExample,
    ChatTemplateError,
    Encoded,
    collate,
    encode_all,
    encode_chat,
    length_batches,
    pad_token_id,
    pair_examples,
    probe_examples,
)
from .collect import capture
from .hooks import StopForward, record, run_until
from .reduce import AGGREGATIONS, CaptureResult, reduce_batch, site_batches
from .sharded import SHARDS, all_reduce_result, capture_distributed, shard_indices

__all__ = [
    "AGGREGATIONS",
    "IGNORE_INDEX",
    "SHARDS",
    "Batch",
    "CaptureResult",
    "ChatExample",
    "ChatTemplateError",
    "Encoded",
    "StopForward",
    "all_reduce_result",
    "capture",
    "capture_distributed",
    "collate",
    "encode_all",
    "encode_chat",
    "length_batches",
    "pad_token_id",
    "pair_examples",
    "probe_examples",
    "record",
    "reduce_batch",
    "run_until",
    "shard_indices",
    "site_batches",
]

# ``saetools.capture(model, tokenizer, ...)`` works like ``saetools.capture.capture``.
make_callable(__name__, capture)
