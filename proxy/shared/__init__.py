"""State the appliances share through Redis (``--redis``): the link (``link``: connections,
bounds, up/down, backoff), the channel every appliance listens on (``bus``), the
cloud-answer cache (``answers``), the approved/blocked lists (``lists``) and the per-client
rate limits (``rates``). Each keeps the appliance answering from its own state while Redis
is down or slow.

May import: the bottom layer, ``proxy.wire`` and ``proxy.decide`` (and ``redis``).
"""
