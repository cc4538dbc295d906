"""Why poolwatch talks to the node through its own transport and not python-bitcoinrpc 1.0 (which the
design named): the two limits docs/node.md states, shown on a real node. If a python-bitcoinrpc
release fixes them, these tests fail and docs/node.md is due for an update."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from pipeline.source.config import NodeConfig
from pipeline.source.transport import Transport

pytestmark = pytest.mark.node

PASSWORD = "p@ss/w%rd"  # characters a URL must percent-encode


def test_batch_fails_on_json_rpc_2_replies(regtest_node) -> None:
    """Core 28+ answers a batch in JSON-RPC 2.0 style (no ``error`` key on success): python-bitcoinrpc's
    ``batch_`` reads ``response['error']`` and raises KeyError; the transport reads both styles."""
    from bitcoinrpc.authproxy import AuthServiceProxy

    from pipeline.source.config import read_cookie

    if regtest_node.flavor != "core":
        pytest.skip("the SV node answers JSON-RPC 1.0 style, with error: null")
    user, password = read_cookie(regtest_node.cookie_file)
    proxy = AuthServiceProxy(f"http://{user}:{password}@127.0.0.1:{regtest_node.port}")
    with pytest.raises(KeyError, match="error"):
        proxy.batch_([["getblockhash", 0], ["getblockcount"]])
    transport = Transport(NodeConfig(url=regtest_node.rpc_url, cookie_file=regtest_node.cookie_file, retries=0))
    assert transport.batch([("getblockhash", [0]), ("getblockcount", [])])[0] == regtest_node.rpc("getblockhash", 0)


def test_percent_encoded_password_is_sent_encoded(regtest_binary, tmp_path) -> None:
    """python-bitcoinrpc takes credentials from the URL without decoding them: a password with ``@``,
    ``/`` or ``%`` must be percent-encoded in the URL and is then sent encoded, so the node refuses it
    (HTTP 401). The transport sends the decoded password."""
    from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

    from pipeline.devnode.node import RegtestNode
    from pipeline.source.errors import NodeAuthError

    with RegtestNode(regtest_binary, datadir=tmp_path / "node", rpc_auth=("alice", PASSWORD)) as node:
        url = f"http://alice:{quote(PASSWORD, safe='')}@127.0.0.1:{node.port}"
        with pytest.raises(JSONRPCException, match="401"):
            AuthServiceProxy(url).getblockcount()
        config = NodeConfig.resolve(url=url)  # poolwatch decodes what it splits out of a URL
        assert (config.user, config.password) == ("alice", PASSWORD)
        assert Transport(NodeConfig(url=node.rpc_url, user="alice", password=PASSWORD, retries=0)).call(
            "getblockcount") == 0
        with pytest.raises(NodeAuthError):
            Transport(NodeConfig(url=node.rpc_url, user="alice", password=quote(PASSWORD, safe=""),
                                 retries=0)).call("getblockcount")
