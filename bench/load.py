"""Load generation for the bench: wrk runs driven by small Lua scripts, and their results.

wrk (C, one thread, 64 keep-alive connections) is the load generator; every
script ends with the same ``done`` hook, which prints one ``BENCH {json}`` line
with the request count, errors and latency percentiles that ``run_wrk`` parses.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""

# GET the URL given on the command line.
GET = DONE

# POST the file named by the first script argument, as JSON.
POST_FILE = r"""
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
""" + DONE

# POST the items of the file named by args[1] (a JSON body ending in "]}") with args[2]
# more {"sha256": new digest} items appended each request: misses nobody has seen.
POST_MISSES = r"""
local counter = 0
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  head = string.sub(f:read("*a"), 1, -3)
  f:close()
  extra = tonumber(args[2])
  stem = string.format("%08x", math.random(0, 0x7fffffff)) .. string.rep("0", 40)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
request = function()
  local parts = {head}
  for i = 1, extra do
    counter = counter + 1
    parts[#parts + 1] = string.format(', {"sha256": "%s%016x"}', stem, counter)
  end
  parts[#parts + 1] = "]}"
  return wrk.format(nil, nil, nil, table.concat(parts))
end
""" + DONE

# GET PREFIX .. line for each line of the file named by args[2], cycling (args[1] = PREFIX).
GET_CYCLE = r"""
local lines, n, i = {}, 0, 0
init = function(args)
  prefix = args[1]
  for line in io.lines(args[2]) do n = n + 1; lines[n] = line end
  i = math.random(n)
end
request = function()
  i = i % n + 1
  return wrk.format("GET", prefix .. lines[i])
end
""" + DONE

# GET PREFIX .. (48 hex digits given as args[2]) .. a 16-hex-digit counter: a new SHA-256 every time.
GET_UNIQUE = r"""
local counter = 0
init = function(args)
  prefix = args[1]
  stem = args[2]
end
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. stem .. string.format("%08x%08x", 0, counter))
end
""" + DONE


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    socket_errors: int
    non2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non2xx


def write_scripts(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, text in (("get", GET), ("post_file", POST_FILE), ("post_misses", POST_MISSES),
                       ("get_cycle", GET_CYCLE),
                       ("get_unique", GET_UNIQUE)):
        path = directory / f"{name}.lua"
        path.write_text(text)
        out[name] = path
    return out


def run_wrk(
    url: str,
    script: Path,
    *args: str,
    connections: int = 64,
    seconds: float = 6,
    core: int | None = 1,
    timeout: float = 5,
) -> WrkResult:
    """One wrk run (one thread) pinned to ``core``; raises RuntimeError when wrk fails."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout:g}s",
           "-s", str(script), url]
    if args:
        cmd += ["--", *args]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            d = json.loads(line[6:])
            return WrkResult(
                requests=d["requests"],
                seconds=d["duration_us"] / 1e6,
                socket_errors=d["socket_errors"],
                non2xx=d["non2xx"],
                p50_ms=d["p50_us"] / 1000,
                p90_ms=d["p90_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
                mean_ms=d["mean_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
