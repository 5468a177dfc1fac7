"""The Safe Browsing v4 facade: the web reputation as the v4 API serves it (threat lists,
updates, full hashes, lookups), from the same patterns and lists."""
