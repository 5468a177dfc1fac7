"""ClientMask: log_clients for every client, log_client_networks for some."""

from __future__ import annotations

import pytest

from proxy.errors import ConfigError
from proxy.logs.clients import ClientMask


@pytest.mark.parametrize(("client", "stored"), [
    ("192.0.2.9", "192.0.2.9"),  # no network holds it: log_clients (full)
    ("10.1.2.3", "10.1.2.0/24"),  # 10/8: truncated
    ("10.20.3.4", ""),  # 10.20/16 is more specific than 10/8: none
    ("::ffff:10.20.3.4", ""),  # an IPv4-mapped address is its IPv4 address
    ("2001:db8:5::1", "2001:db8:5::/48"),
    ("not-an-address", "not-an-address"),  # kept only under full, as without networks
])
def test_the_most_specific_network_decides(client: str, stored: str) -> None:
    mask = ClientMask("full", ["10.0.0.0/8=truncated", "10.20.0.0/16=none",
                               "2001:db8::/32=truncated"])
    assert mask(client) == stored
    assert mask(client) == stored  # and again, from the memo


def test_a_network_can_keep_more_than_the_global_mode() -> None:
    mask = ClientMask("none", ["192.168.7.0/24=full"])
    assert mask("192.168.7.40") == "192.168.7.40"
    assert mask("192.168.8.40") == ""
    assert mask("junk") == ""


@pytest.mark.parametrize("entry", ["10.0.0.0/8", "10.0.0.0/8=hashed", "ten=none", "=full"])
def test_a_bad_entry_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(ConfigError, match="log_client_networks"):
        ClientMask("full", [entry])
