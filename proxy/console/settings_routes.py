"""The admin API's settings: every config key with its value and where it is set, and
changes to the keys the running server takes at once (``proxy.settings``,
``proxy.serve.live``). Reading needs ``read``; changing needs ``settings.write``
(administrators)."""

from __future__ import annotations

from typing import Any

from proxy import settings
from proxy.console.api import Route, json_body
from proxy.errors import ProtocolError
from proxy.serve.live import apply_settings
from proxy.wire.http import Request

MAX_CHANGES = len(settings.LIVE)


class SettingOps:
    def __init__(self, app: Any) -> None:
        self.app = app

    def show(self, request: Request, _: Any) -> dict[str, Any]:
        layers = self.app.layers
        return {"settings": settings.describe(self.app.cfg, layers),
                "config_file": None if layers.config_file is None else str(layers.config_file),
                "live": list(settings.LIVE)}

    async def change(self, request: Request, who: Any) -> dict[str, Any]:
        doc = json_body(request, ("changes",))
        changes = doc["changes"]
        if not isinstance(changes, dict) or not changes or len(changes) > MAX_CHANGES:
            raise ProtocolError("bad_field", "field 'changes' must be an object of 1 to"
                                f" {MAX_CHANGES} settings (key: value; null for the default)")
        await apply_settings(self.app, changes)
        return self.show(request, who)


def setting_routes(ops: SettingOps) -> list[Route]:
    return [
        Route("GET", "/api/settings", "read",
              "Every setting: value, default, help, whether the console may change it and"
              " where it is set", ops.show),
        Route("POST", "/api/settings", "settings.write",
              "Change settings the running server takes at once (saved in DATA_DIR/settings.json);"
              " a key set by the config file or a flag is refused (409)", ops.change,
              {"changes": "an object: setting key to its new value, null for its default"}),
    ]
