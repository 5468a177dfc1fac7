"""The appliance's logs (issue 10, "Logs"), in SQLite at ``DATA_DIR/logs.sqlite``:

- ``store``: the database (WAL, 0600): the query log and its Blocked Access view, the
  update log, relay failures and the admin audit; retention by days and rows;
- ``entries``: what a query-door answer becomes in the query log (items, verdicts,
  sources, which list or pattern decided), client addresses kept as configured;
- ``writer``: the thread that writes off the request path, in batches, from a bounded
  queue that drops (and counts) log entries, never queries;
- ``search`` and ``export``: filtered, paged, newest-first reads and streamed CSV/JSON;
- ``hub``: what a running ``App`` holds (``Logs``): the store, the writer, the observers;
- ``jsonlog``: standard-error log lines as JSON objects (``log_format = "json"``).

May import: the bottom layer (``errors``, ``model``, ``config``, ``files``, ``clock``)
and ``proxy.wire``.
"""
