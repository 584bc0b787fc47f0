"""Error classes every layer raises and catches, importable without torch.

This module imports nothing from the package, so the workflow can name the errors it turns
into one-line messages (:mod:`rlpredict.workflow`) while it parses the Snakefile.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """A model dir or file is missing, malformed or incompatible; the message names it."""
