"""Tests for appliance/: transparent-mode rules (pure), `rampart appliance setup/teardown --dry-run`,
the default config file and the systemd unit."""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from appliance import netrules
from appliance.netrules import Backend, Step
from proxy import config as config_mod
from proxy.cli import cli
from proxy.cli.config import config_text

APPLIANCE = Path(__file__).parents[2] / "appliance"


def run(*args: str, path: str | None = None) -> tuple[int, str]:
    """The command's exit code and output; ``path``: $PATH for it (which tools it finds)."""
    env = {"PATH": path} if path is not None else None
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


@pytest.fixture
def no_tools(tmp_path: Path) -> str:
    """A $PATH with neither nft nor iptables on it: the CLI tests must not depend on this
    machine's firewall tools (only applying rules needs them)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


@pytest.fixture
def fake_tools(tmp_path: Path) -> str:
    """A $PATH where nft, iptables and ip6tables exist (scripts that do nothing)."""
    where = tmp_path / "tools"
    where.mkdir()
    for tool in ("nft", "iptables", "ip6tables"):
        script = where / tool
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    return str(where)


# -- rules -------------------------------------------------------------------------------


def test_nft_ruleset_redirects_only_products_web_traffic_in_prerouting() -> None:
    rules = netrules.nft_ruleset("eth1", 8081)
    assert "type nat hook prerouting priority dstnat" in rules
    assert 'iifname "eth1" meta l4proto tcp th dport { 80, 443 } redirect to :8081' in rules
    # the loop guard: nothing in output, and traffic to the appliance itself is not redirected
    assert "hook output" not in rules
    assert 'iifname "eth1" fib daddr type local return' in rules
    assert rules.index("fib daddr type local return") < rules.index("redirect to")
    # replaces an earlier copy atomically (create, delete, define in one nft -f)
    assert rules.startswith("table inet rampart\ndelete table inet rampart\ntable inet rampart {")


@pytest.mark.parametrize(
    "name",
    ["", "a" * 16, "eth 1", 'eth1"; flush ruleset; "', "eth/1", ".", "..", "eth1\n"],
)
def test_bad_interface_names_are_refused_before_any_rule_is_built(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid interface name"):
        netrules.setup_plan(name)


@pytest.mark.parametrize("name", ["eth0", "veth-gw-1", "eth0.10", "enp0s31f6", "br_lan", "a" * 15])
def test_good_interface_names(name: str) -> None:
    assert netrules.check_interface(name) == name


@pytest.mark.parametrize("port", [0, 65536, -1, True])
def test_bad_ports_are_refused(port: int) -> None:
    with pytest.raises(ValueError, match="transparent port"):
        netrules.setup_plan("eth1", port=port)


@pytest.mark.parametrize(
    ("parts", "shown", "path"),
    [
        (("net", "ipv4", "ip_forward"), "net.ipv4.ip_forward=1", "/proc/sys/net/ipv4/ip_forward"),
        (("net", "ipv4", "conf", "eth0.10", "send_redirects"), "net.ipv4.conf.eth0/10.send_redirects=1",
         "/proc/sys/net/ipv4/conf/eth0.10/send_redirects"),
    ],
)
def test_sysctl_steps(parts: tuple[str, ...], shown: str, path: str) -> None:
    step = netrules.sysctl_step(parts, "1")
    assert step.shown() == f"sysctl -w {shown}"
    assert step.sysctl == (path, "1")


def test_setup_plan_nft_sysctls_then_rules() -> None:
    plan = netrules.setup_plan("eth1", port=9000)
    sysctls = [s.sysctl for s in plan.steps if s.sysctl]
    assert sysctls == [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
        ("/proc/sys/net/ipv4/conf/all/send_redirects", "0"),
        ("/proc/sys/net/ipv4/conf/eth1/send_redirects", "0"),
    ]
    last = plan.steps[-1]
    assert last.argv == ("nft", "-f", "-") and "redirect to :9000" in (last.stdin or "")


def test_setup_plan_iptables_covers_ipv4_and_ipv6_and_is_rerunnable() -> None:
    plan = netrules.setup_plan("eth1", backend=Backend.IPTABLES)
    commands = [s.argv for s in plan.steps if s.argv]
    for tool in ("iptables", "ip6tables"):
        nat = (tool, "-t", "nat")
        assert (*nat, "-A", "PREROUTING", "-i", "eth1", "-j", "RAMPART") in commands
        assert (*nat, "-A", "RAMPART", "-p", "tcp", "-m", "multiport", "--dports", "80,443",
                "-j", "REDIRECT", "--to-ports", "8081") in commands
        local = (*nat, "-A", "RAMPART", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN")
        assert commands.index(local) < commands.index((*nat, "-A", "RAMPART", "-p", "tcp", "-m",
                                                       "multiport", "--dports", "80,443", "-j",
                                                       "REDIRECT", "--to-ports", "8081"))
        # an earlier setup is removed first, and its absence is not an error
        first = commands.index((*nat, "-D", "PREROUTING", "-i", "eth1", "-j", "RAMPART"))
        assert first < commands.index((*nat, "-N", "RAMPART"))
    assert not any("OUTPUT" in argv for argv in commands)
    removals = [s for s in plan.steps if s.sysctl is None and s.argv[3] in ("-D", "-F", "-X")]
    assert removals and not any(s.must_succeed for s in removals)


@pytest.mark.parametrize(
    ("available", "wanted", "expected"),
    [
        ({"nft", "iptables"}, "auto", Backend.NFT),
        ({"iptables"}, "auto", Backend.IPTABLES),
        ({"nft"}, "iptables", Backend.IPTABLES),
        (set(), "auto", Backend.NFT),  # neither: nftables, what a dry run prints and to install
        (set(), "iptables", Backend.IPTABLES),
    ],
)
def test_choose_backend(available: set[str], wanted: str, expected: Backend) -> None:
    assert netrules.choose_backend(lambda n: n if n in available else None, wanted) is expected


@pytest.mark.parametrize(
    ("available", "backend", "missing"),
    [
        (set(), Backend.NFT, ["nft"]),
        ({"nft"}, Backend.NFT, []),
        ({"iptables"}, Backend.IPTABLES, ["ip6tables"]),
        ({"iptables", "ip6tables"}, Backend.IPTABLES, []),
    ],
)
def test_missing_tools(available: set[str], backend: Backend, missing: list[str]) -> None:
    assert netrules.missing_tools(backend, lambda n: n if n in available else None) == missing


def test_teardown_plans() -> None:
    nft = netrules.teardown_plan(None)
    assert [s.argv for s in nft.steps] == [("nft", "delete", "table", "inet", "rampart")]
    ipt = netrules.teardown_plan("eth1", backend=Backend.IPTABLES)
    assert ("iptables", "-t", "nat", "-D", "PREROUTING", "-i", "eth1", "-j", "RAMPART") in [
        s.argv for s in ipt.steps
    ]
    with pytest.raises(ValueError, match="give --interface"):
        netrules.teardown_plan(None, backend=Backend.IPTABLES)


def test_apply_runs_steps_in_order_and_stops_at_a_required_failure() -> None:
    ran: list[tuple[Sequence[str], str | None]] = []
    wrote: list[tuple[str, str]] = []

    def runner(argv: Sequence[str], stdin: str | None) -> tuple[int, str]:
        ran.append((argv, stdin))
        return (1, "Operation not permitted") if argv[0] == "nft" else (0, "")

    plan = netrules.setup_plan("eth1")
    with pytest.raises(RuntimeError, match="nft -f - failed \\(exit 1\\): Operation not permitted"):
        netrules.apply(plan, runner, lambda p, v: wrote.append((p, v)))
    assert len(wrote) == 4 and ran[0][0] == ("nft", "-f", "-")
    assert "redirect to :8081" in (ran[0][1] or "")


def test_apply_ignores_failures_of_optional_steps() -> None:
    plan = netrules.Plan(Backend.IPTABLES, (Step(argv=("false",), must_succeed=False), Step(argv=("true",))))
    done = netrules.apply(plan, lambda a, s: (1 if a[0] == "false" else 0, ""), lambda p, v: None)
    assert done == ["false  (nothing to remove)", "true"]


def test_apply_reports_a_sysctl_it_cannot_write() -> None:
    def refuse(path: str, value: str) -> None:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(RuntimeError, match=r"sysctl -w net\.ipv4\.ip_forward=1 failed: Permission denied"):
        netrules.apply(netrules.setup_plan("eth1"), lambda a, s: (0, ""), refuse)


# -- the CLI -----------------------------------------------------------------------------


def test_setup_dry_run_prints_exactly_the_plan(fake_tools: str) -> None:
    code, out = run("appliance", "setup", "--transparent", "--interface", "eth1", "--backend", "nft",
                    "--dry-run", path=fake_tools)
    assert code == 0, out
    plan = netrules.setup_plan("eth1", backend=Backend.NFT)
    expected = "# backend: nft\n" + "".join(s.shown() + "\n" for s in plan.steps)
    assert out.startswith(expected)
    assert "sysctl -w net.ipv4.ip_forward=1\n" in out
    assert "nft -f - <<'EOF'\n" in out and "redirect to :8081" in out
    assert "not installed" not in out


def test_setup_dry_run_needs_neither_nft_nor_iptables(no_tools: str) -> None:
    """A dry run prints the nftables rules on a machine with no firewall tool at all, and says
    what to install before applying them."""
    code, out = run("appliance", "setup", "--transparent", "--interface", "eth1", "--dry-run",
                    path=no_tools)
    assert code == 0, out
    assert out.startswith("# backend: nft\n")
    assert 'iifname "eth1" meta l4proto tcp th dport { 80, 443 } redirect to :8081' in out
    assert "# nft is not installed on this machine: install nftables" in out


def test_setup_dry_run_prints_the_backend_named_by_the_flag_without_it_installed(no_tools: str) -> None:
    code, out = run("appliance", "setup", "--transparent", "--interface", "eth1", "--backend",
                    "iptables", "--dry-run", path=no_tools)
    assert code == 0, out
    assert "iptables -t nat -A PREROUTING -i eth1 -j RAMPART" in out
    assert "# iptables and ip6tables are not installed on this machine: install iptables" in out


def test_teardown_dry_run_needs_no_tool(no_tools: str) -> None:
    code, out = run("appliance", "teardown", "--dry-run", path=no_tools)
    assert code == 0, out
    assert "nft delete table inet rampart  # errors ignored" in out


def test_setup_without_the_tool_is_refused_before_any_change(no_tools: str) -> None:
    """Applying without nft installed is refused up front (exit 2, what to install), not after
    the sysctls were written and with a misleading "needs root" message."""
    code, out = run("appliance", "setup", "--transparent", "--interface", "eth1", path=no_tools)
    assert code == 2, out
    assert "nft is not installed on this machine: install nftables (or use --backend iptables)" in out
    assert "done:" not in out


@pytest.mark.parametrize("name", ["eth1;rm", "a" * 16, "eth 1", "eth1/0", ""])
@pytest.mark.parametrize("tools", ["no_tools", "fake_tools"])
def test_setup_checks_the_interface_name_first(name: str, tools: str,
                                               request: pytest.FixtureRequest) -> None:
    """A bad interface name is exit 2 naming it, whatever tools the machine has, dry run or not."""
    path = request.getfixturevalue(tools)
    for dry in (["--dry-run"], []):
        code, out = run("appliance", "setup", "--transparent", "--interface", name, *dry, path=path)
        assert code == 2, out
        assert f"interface {name!r} is not a valid interface name" in out
        assert "installed" not in out and "done:" not in out


def test_teardown_checks_the_interface_name(no_tools: str) -> None:
    code, out = run("appliance", "teardown", "--interface", "eth1;rm", "--backend", "iptables",
                    "--dry-run", path=no_tools)
    assert code == 2 and "interface 'eth1;rm' is not a valid interface name" in out


def test_setup_dry_run_iptables_and_port_from_config(tmp_path: Path, no_tools: str) -> None:
    cfg = tmp_path / "rampart.toml"
    cfg.write_text("transparent_port = 8181\n")
    code, out = run("appliance", "setup", "--transparent", "--interface", "lan0", "--backend", "iptables",
                    "--config", str(cfg), "--dry-run", path=no_tools)
    assert code == 0, out
    assert "iptables -t nat -A RAMPART -p tcp -m multiport --dports 80,443 -j REDIRECT --to-ports 8181" in out
    assert "ip6tables -t nat -A PREROUTING -i lan0 -j RAMPART" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interface", "eth1", "--dry-run"], "--transparent"),
        (["--transparent", "--interface", "bad name", "--dry-run"], "not a valid interface name"),
    ],
)
def test_setup_refuses_bad_input(args: list[str], message: str, no_tools: str) -> None:
    code, out = run("appliance", "setup", *args, path=no_tools)
    assert code == 2 and message in out


def test_teardown_dry_run(fake_tools: str) -> None:
    code, out = run("appliance", "teardown", "--backend", "nft", "--dry-run", path=fake_tools)
    assert code == 0, out
    assert "nft delete table inet rampart  # errors ignored" in out


# -- deployment files --------------------------------------------------------------------


def test_shipped_config_file_is_the_appliance_output() -> None:
    """appliance/rampart.toml is exactly `rampart config --appliance`, so it lists every key."""
    code, out = run("config", "--appliance")
    assert code == 0, out
    regenerate = "regenerate it: rampart config --appliance > appliance/rampart.toml"
    shipped = (APPLIANCE / "rampart.toml").read_text()
    assert shipped == out, f"appliance/rampart.toml is out of date; {regenerate}"
    assert out == config_text(appliance=True)


def test_shipped_config_file_loads_with_the_appliance_data_dir() -> None:
    cfg = config_mod.load(APPLIANCE / "rampart.toml")
    assert cfg == config_mod.Config().replace(data_dir="/var/lib/rampart")


def test_appliance_config_is_now_rampart_config_appliance() -> None:
    """One command prints config files: `rampart appliance config` is gone."""
    code, out = run("appliance", "config")
    assert code == 2 and "No such command 'config'" in out
    code, out = run("appliance", "--help")
    assert code == 0 and "rampart config --appliance" in " ".join(out.split())


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((APPLIANCE / "rampart.service").read_text())
    service = unit["Service"]
    assert service["User"] == "rampart"
    assert service["StateDirectory"] == "rampart"
    assert service["ExecStart"] == "rampart serve --config /etc/rampart/rampart.toml"
    # low ports only: transparent mode needs no capability (the rules are set by the "+"
    # lines with full privileges; SO_ORIGINAL_DST is read unprivileged)
    assert service["AmbientCapabilities"].split() == ["CAP_NET_BIND_SERVICE"]
    assert service["CapabilityBoundingSet"].split() == ["CAP_NET_BIND_SERVICE"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/rampart"
    assert service["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def unit_commands() -> list[str]:
    """Every `rampart …` command line the unit runs or its comments tell the reader to run:
    Exec lines (commented or not), indented command lines and `quoted` commands."""
    candidates = []
    for line in (APPLIANCE / "rampart.service").read_text().splitlines():
        if re.match(r"#?Exec\w*=", line):
            candidates.append(line.split("=", 1)[1].lstrip("+"))
        elif line.startswith("#   "):
            candidates.append(line[4:])
        candidates += re.findall(r"`([^`]+)`", line)
    return [m for c in candidates for m in re.findall(r"(?:^|(?<=\s))rampart ((?!rampart\b)[^>|&;]+)", c)]


def test_every_command_the_unit_names_exists_with_its_options() -> None:
    """The unit's comments name only what is built: each command parses with the real CLI."""
    from addons.cli import rampart

    commands = unit_commands()
    assert {c.split()[0] for c in commands} >= {"serve", "appliance", "ca"}
    for line in commands:
        words = shlex.split(line)
        command: click.Command = rampart()
        # under the root's context, as the console script parses it (a context made without
        # one would fix click's cached help option to the default names)
        parent = command.make_context("rampart", [], resilient_parsing=True)
        path = []
        while isinstance(command, click.Group):
            name = words.pop(0)
            assert name in command.commands, f"rampart {' '.join(path)} has no command {name!r}: {line}"
            path.append(name)
            command = command.commands[name]
        try:
            command.make_context(" ".join(path), words, parent=parent)
        except click.UsageError as e:
            raise AssertionError(f"the unit says `rampart {line}`: {e.format_message()}") from None


def test_unit_mentions_nothing_that_is_not_built() -> None:
    text = (APPLIANCE / "rampart.service").read_text().lower()
    for planned in ("console", "ip_transparent", "cap_net_admin", "https://"):
        assert planned not in text, planned
