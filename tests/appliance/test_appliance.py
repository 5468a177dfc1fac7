"""Tests for appliance/: transparent-mode rules (pure), `rampart appliance setup/teardown --dry-run`,
the default config file and the systemd unit."""

from __future__ import annotations

import configparser
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import netrules
from appliance.netrules import Backend, Step
from proxy import config as config_mod
from proxy.cli import cli
from proxy.cli.appliance import default_config_text

APPLIANCE = Path(__file__).parents[2] / "appliance"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


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
    ],
)
def test_choose_backend(available: set[str], wanted: str, expected: Backend) -> None:
    assert netrules.choose_backend(lambda n: n if n in available else None, wanted) is expected


def test_choose_backend_without_any_tool() -> None:
    with pytest.raises(LookupError, match="install nftables"):
        netrules.choose_backend(lambda n: None)


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


def test_setup_dry_run_prints_exactly_the_plan() -> None:
    code, out = run("appliance", "setup", "--transparent", "--interface", "eth1", "--backend", "nft",
                    "--dry-run")
    assert code == 0, out
    plan = netrules.setup_plan("eth1", backend=Backend.NFT)
    expected = "# backend: nft\n" + "".join(s.shown() + "\n" for s in plan.steps)
    assert out.startswith(expected)
    assert "sysctl -w net.ipv4.ip_forward=1\n" in out
    assert "nft -f - <<'EOF'\n" in out and "redirect to :8081" in out


def test_setup_dry_run_iptables_and_port_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "rampart.toml"
    cfg.write_text("transparent_port = 8181\n")
    code, out = run("appliance", "setup", "--transparent", "--interface", "lan0", "--backend", "iptables",
                    "--config", str(cfg), "--dry-run")
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
def test_setup_refuses_bad_input(args: list[str], message: str) -> None:
    code, out = run("appliance", "setup", *args)
    assert code != 0 and message in out


def test_teardown_dry_run() -> None:
    code, out = run("appliance", "teardown", "--backend", "nft", "--dry-run")
    assert code == 0, out
    assert "nft delete table inet rampart  # errors ignored" in out


# -- deployment files --------------------------------------------------------------------


def test_default_config_lists_every_key_and_matches_the_generator() -> None:
    shipped = (APPLIANCE / "rampart.toml").read_text()
    missing = [key for key, _, _ in config_mod.describe()
               if f"\n# {key} = " not in shipped and f"\n{key} = " not in shipped]
    regenerate = "regenerate it: rampart appliance config > appliance/rampart.toml"
    assert not missing, f"appliance/rampart.toml lacks {missing}; {regenerate}"
    assert shipped == default_config_text(), f"appliance/rampart.toml is out of date; {regenerate}"


def test_default_config_loads_and_uncommented_defaults_are_valid(tmp_path: Path) -> None:
    shipped = (APPLIANCE / "rampart.toml").read_text()
    assert config_mod.load(APPLIANCE / "rampart.toml").data_dir == Path("/var/lib/rampart")
    # every shown default is itself valid TOML the config accepts
    uncommented = "\n".join(
        line[2:] for line in shipped.splitlines()
        if line.startswith("# ") and " = " in line and line[2:].split(" = ")[0].isidentifier()
        and not line[2:].startswith(("data_dir", "cloud_ca", "update_source", "update_key"))
    )
    doc = tomllib.loads(uncommented)
    assert set(doc) >= {"query_port", "transparent_port", "cloud"}
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    assert config_mod.load(path) == config_mod.load(None)


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((APPLIANCE / "rampart.service").read_text())
    service = unit["Service"]
    assert service["User"] == "rampart"
    assert service["StateDirectory"] == "rampart"
    assert service["ExecStart"] == "rampart serve --config /etc/rampart/rampart.toml"
    assert set(service["AmbientCapabilities"].split()) == {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/rampart"
    assert service["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
