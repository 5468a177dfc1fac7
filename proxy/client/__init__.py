"""The reference client: what a product does on its side of the wire protocol (agent
pattern first, cached answers, servers by priority and location, offline flags and
re-scans), as a library a product embeds and the ``rampart client`` commands use."""
