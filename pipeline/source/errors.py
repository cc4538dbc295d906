"""The node's errors: one class per thing a caller (or a person) would do differently.

Every message says what to do and never holds a secret (``pipeline.source.transport`` scrubs
foreign text and raises these outside the ``except`` blocks that caught library exceptions).
"""

from __future__ import annotations

# Core's RPC error codes we react to (src/rpc/protocol.h).
RPC_MISC_ERROR = -1
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_CLIENT_IN_INITIAL_DOWNLOAD = -10
RPC_IN_WARMUP = -28
RPC_INTERNAL_ERROR = -32603


class NodeError(RuntimeError):
    """Base of every node error; the message says what to do and never holds a secret."""


class NodeConfigError(NodeError):
    """The node connection is not configured (e.g. a missing Airflow connection): no retry helps."""


class NodeAuthError(NodeError):
    """HTTP 401, or the cookie file cannot be read."""


class NodeUnreachableError(NodeError):
    """Connection refused / DNS failure / timeout, after the configured retries."""


class NodeHostNotFoundError(NodeConfigError, NodeUnreachableError):
    """The node's host name does not resolve (no such name): raised at once, since no retry can fix
    a typo. Still a NodeUnreachableError for callers that catch that; a NodeConfigError because the
    configuration is what has to change."""


class NodeWarmingUpError(NodeError):
    """RPC -28: the node is loading (block index, wallet, ...)."""


class NodeInInitialDownloadError(NodeError):
    """getblockchaininfo says initialblockdownload: the node's chain is not yet trustworthy."""

    def __init__(self, message: str, progress: float | None = None, blocks: int | None = None,
                 headers: int | None = None) -> None:
        super().__init__(message)
        self.progress = progress
        self.blocks = blocks
        self.headers = headers


class NodePrunedError(NodeError):
    """The node has pruned the asked blocks; .prune_height is the lowest height it still stores."""

    def __init__(self, message: str, prune_height: int | None = None) -> None:
        super().__init__(message)
        self.prune_height = prune_height


class HeightAboveTipError(NodeError):
    """A height above the node's tip was asked for."""

    def __init__(self, message: str, height: int, tip: int | None = None) -> None:
        super().__init__(message)
        self.height = height
        self.tip = tip


class NodeRPCError(NodeError):
    """Any other JSON-RPC error the node returned."""

    def __init__(self, message: str, code: int | None = None, rpc_message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.rpc_message = rpc_message
