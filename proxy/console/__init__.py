"""The console's credentials: accounts with roles, named API keys and browser sessions.

What the console door (the admin API and web console, issue 10) asks before it answers:
who is calling (``Accounts.authenticate_bearer`` for ``Authorization: Bearer KEY``,
``Accounts.session`` for the session cookie) and whether their role may do it
(``roles.may``). Everything lives in ``DATA_DIR/console.sqlite`` (WAL, 0600), so the
server and ``rampart admin`` on the same machine share it.

Modules: ``errors`` (401, 403, 400, 404, 409, 429 as RampartErrors), ``roles`` (the
one role -> permission table, ``Principal``), ``passwords`` (salted scrypt),
``limiter`` (failed logins per client), ``store`` (the SQLite file), ``keys``,
``sessions`` and ``accounts`` (users, the first admin, and the ``Accounts`` facade).

May import: the bottom layer (``proxy.errors``, ``proxy.model``, ``proxy.files``,
``proxy.clock``, ``proxy.config``), ``proxy.wire``, ``proxy.decide``, ``proxy.logs``,
``proxy.serve``, ``proxy.updates``, ``proxy.patterns``, ``certs``; never ``proxy.cli``.
"""
