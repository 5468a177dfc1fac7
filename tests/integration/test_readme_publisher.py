"""The README's publisher example, run as written (its /tmp and ~ paths moved under the test's
folder): keygen, build, publish, a second complete build in the same hour, publish again."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

from tests.conftest import RAMPART
from tests.test_readme import README, ROOT


def _publisher_lines() -> list[str]:
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                 if b.startswith("# publisher"))
    block = block.split("\n# appliance", 1)[0]
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("rampart pattern") and " serve " not in line:
            lines.append(line)
    return lines


def test_the_readme_publisher_example_runs_as_written(tmp_path: Path) -> None:
    lines = _publisher_lines()
    assert [shlex.split(line)[2] for line in lines] == ["keygen", "build", "publish", "build",
                                                        "publish"]
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    outputs = []
    for line in lines:
        line = line.replace("/tmp/", f"{tmp_path}/").replace("~/", f"{tmp_path}/home/")
        r = subprocess.run([*RAMPART, *shlex.split(line)[1:]], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (line, r.stdout, r.stderr)
        outputs.append(r.stdout + r.stderr)
    # the second publish counted what it added, and in the same hour took a free version
    assert "+8 -0 entries" in outputs[4]
    built = [re.search(r"version (\d+)", outputs[i]) for i in (1, 3)]
    if built[0] and built[1] and built[0][1] == built[1][1]:  # not across an hour's end
        assert "the next free version" in outputs[4]
    manifest = tmp_path / "repo" / "manifest.json"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o644  # any web server may serve it
    assert stat.S_IMODE((tmp_path / "home" / "keys" / "rampart.key").stat().st_mode) == 0o600
