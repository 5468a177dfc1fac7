"""The DNS door: the domain/IP reputation as DNSBL zones over UDP and TCP, from the
same engine as the query door (docs/architecture.md, "The DNS door")."""
