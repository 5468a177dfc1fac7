"""Transparent-mode network setup: the sysctls and firewall rules, as pure functions.

``setup_plan`` and ``teardown_plan`` return the exact steps (sysctl writes and
commands, with any script fed on standard input); ``apply`` runs them through an
injected runner, so tests check the rules without touching the machine and
``--dry-run`` prints the same steps it would run.

The redirect (TCP 80 and 443 to the transparent port) lives only in the
``prerouting`` hook and only for packets arriving on the product-facing
interface. That is the loop guard: the appliance's own upstream connections
(relaying to the cloud, passing traffic through) are created locally, so they
leave through the ``output`` hook and never cross ``prerouting``; they cannot be
redirected back into the proxy. No ``output`` rule is installed. (If one were,
it would have to exempt the service user with ``meta skuid != rampart`` /
``-m owner ! --uid-owner rampart``, or every upstream connection of the proxy
would be sent to itself.) Traffic addressed to the appliance itself (its query
door, any other service of its own) is not redirected either (``fib daddr type local``),
so a product asking the appliance directly is not looped through the proxy.
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy.config import default

TABLE = "rampart"
CHAIN = "RAMPART"
REDIRECTED_PORTS = (80, 443)
DEFAULT_TRANSPARENT_PORT: int = default("transparent_port")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


class Backend(enum.Enum):
    NFT = "nft"
    IPTABLES = "iptables"


@dataclass(frozen=True, slots=True)
class Step:
    """One thing to do: a sysctl write or a command (with an optional standard input)."""

    argv: tuple[str, ...] = ()
    stdin: str | None = None
    sysctl: tuple[str, str] | None = None
    """(``/proc/sys`` path, value) when this step is a sysctl write."""
    must_succeed: bool = True

    def shown(self) -> str:
        """The step as a shell command line (what ``--dry-run`` prints)."""
        if self.argv:
            line = shlex.join(self.argv)
        else:
            line = ""
        if self.stdin is not None:
            line += " <<'EOF'\n" + self.stdin.rstrip("\n") + "\nEOF"
        if not self.must_succeed:
            line += "  # errors ignored"
        return line


@dataclass(frozen=True, slots=True)
class Plan:
    backend: Backend
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = field(default=())


def check_interface(name: str) -> str:
    """A Linux interface name (1-15 characters, no spaces, slashes or quotes), else ValueError."""
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"interface {name!r} is not a valid interface name: 1 to 15 letters, digits, _ . : -"
            " (`ip -brief link` lists this machine's)"
        )
    return name


def check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"transparent port {port!r} must be 1 to 65535")
    return port


TOOLS = {Backend.NFT: ("nft",), Backend.IPTABLES: ("iptables", "ip6tables")}
"""The programs each backend's steps run."""
PACKAGES = {Backend.NFT: "nftables", Backend.IPTABLES: "iptables"}


def choose_backend(which: Callable[[str], str | None], wanted: str = "auto") -> Backend:
    """nftables when ``nft`` is installed or neither tool is (what a dry run prints and what
    to install), iptables when only it is; ``wanted`` forces one. Choosing never needs the
    tool: :func:`missing_tools` says what applying would lack."""
    if wanted != "auto":
        return Backend(wanted)
    if which("iptables") and not which("nft"):
        return Backend.IPTABLES
    return Backend.NFT


def missing_tools(backend: Backend, which: Callable[[str], str | None]) -> list[str]:
    """The programs ``backend``'s steps run that are not installed."""
    return [tool for tool in TOOLS[backend] if not which(tool)]


def sysctl_step(parts: Sequence[str], value: str) -> Step:
    """A sysctl write. ``parts`` are the ``/proc/sys`` path components; the shown key uses
    sysctl's spelling, where a dot inside a component (``eth0.10``) is written ``/``."""
    key = ".".join(part.replace(".", "/") for part in parts)
    return Step(argv=("sysctl", "-w", f"{key}={value}"), sysctl=("/proc/sys/" + "/".join(parts), value))


def sysctls(interface: str) -> list[tuple[tuple[str, ...], str]]:
    """Forwarding on (the appliance is the products' gateway) and ICMP redirects off on the
    product side (a redirect would tell products to bypass the appliance); the kernel ORs
    ``all`` with the interface's own setting, so both are turned off."""
    return [
        (("net", "ipv4", "ip_forward"), "1"),
        (("net", "ipv6", "conf", "all", "forwarding"), "1"),
        (("net", "ipv4", "conf", "all", "send_redirects"), "0"),
        (("net", "ipv4", "conf", interface, "send_redirects"), "0"),
    ]


def nft_ruleset(interface: str, port: int, ports: Sequence[int] = REDIRECTED_PORTS) -> str:
    """The ``table inet rampart`` script (replaces an earlier copy atomically with ``nft -f``)."""
    check_interface(interface)
    check_port(port)
    listed = ", ".join(str(check_port(p)) for p in ports)
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f"\tchain prerouting {{\n"
        f"\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"\t\t# only what arrives from the products; the proxy's own connections use output\n"
        f'\t\tiifname "{interface}" fib daddr type local return\n'
        f'\t\tiifname "{interface}" meta l4proto tcp th dport {{ {listed} }} redirect to :{port}\n'
        f"\t}}\n"
        f"}}\n"
    )


def iptables_rules(interface: str, port: int, ports: Sequence[int] = REDIRECTED_PORTS) -> list[Step]:
    """The iptables/ip6tables equivalent: a ``RAMPART`` nat chain jumped to from PREROUTING."""
    check_interface(interface)
    check_port(port)
    listed = ",".join(str(check_port(p)) for p in ports)
    steps: list[Step] = []
    for tool in ("iptables", "ip6tables"):
        steps += _iptables_remove(tool, interface)
        nat = (tool, "-t", "nat")
        steps += [
            Step(argv=(*nat, "-N", CHAIN)),
            Step(argv=(*nat, "-A", CHAIN, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN")),
            Step(argv=(*nat, "-A", CHAIN, "-p", "tcp", "-m", "multiport", "--dports", listed,
                       "-j", "REDIRECT", "--to-ports", str(port))),
            Step(argv=(*nat, "-A", "PREROUTING", "-i", interface, "-j", CHAIN)),
        ]
    return steps


def _iptables_remove(tool: str, interface: str) -> list[Step]:
    nat = (tool, "-t", "nat")
    return [
        Step(argv=(*nat, "-D", "PREROUTING", "-i", interface, "-j", CHAIN), must_succeed=False),
        Step(argv=(*nat, "-F", CHAIN), must_succeed=False),
        Step(argv=(*nat, "-X", CHAIN), must_succeed=False),
    ]


def setup_plan(
    interface: str, *, port: int = DEFAULT_TRANSPARENT_PORT, backend: Backend = Backend.NFT
) -> Plan:
    """Everything ``rampart appliance setup --transparent --interface IF`` does, in order."""
    check_interface(interface)
    check_port(port)
    steps = [sysctl_step(k, v) for k, v in sysctls(interface)]
    if backend is Backend.NFT:
        steps.append(Step(argv=("nft", "-f", "-"), stdin=nft_ruleset(interface, port)))
    else:
        steps += iptables_rules(interface, port)
    notes = (
        f"TCP {', '.join(map(str, REDIRECTED_PORTS))} arriving on {interface} goes to the "
        f"transparent door on port {port}; run `rampart serve` with --transparent-port {port}",
        "the appliance's own upstream traffic leaves through output and is never redirected",
    )
    return Plan(backend, tuple(steps), notes)


def teardown_plan(interface: str | None, *, backend: Backend = Backend.NFT) -> Plan:
    """Remove the redirect. Forwarding sysctls are left as they are (other services may route)."""
    if backend is Backend.NFT:
        steps = [Step(argv=("nft", "delete", "table", "inet", TABLE), must_succeed=False)]
    else:
        if interface is None:
            raise ValueError("the iptables rules are tied to an interface: give --interface")
        check_interface(interface)
        steps = _iptables_remove("iptables", interface) + _iptables_remove("ip6tables", interface)
    notes = ("forwarding sysctls are left on; set net.ipv4.ip_forward=0 if this host should not route",)
    return Plan(backend, tuple(steps), notes)


Runner = Callable[[Sequence[str], str | None], tuple[int, str]]
"""Runs argv with optional standard input; returns (exit status, error text)."""
SysctlWriter = Callable[[str, str], None]


def apply(plan: Plan, run: Runner, write_sysctl: SysctlWriter) -> list[str]:
    """Run ``plan``'s steps in order; stops at the first required step that fails with
    RuntimeError naming it. Returns a line per step done (for the log)."""
    done = []
    for step in plan.steps:
        if step.sysctl is not None:
            path, value = step.sysctl
            try:
                write_sysctl(path, value)
            except OSError as exc:
                raise RuntimeError(f"{step.shown()} failed: {exc.strerror or exc}") from None
            done.append(step.shown())
            continue
        status, error = run(step.argv, step.stdin)
        if status != 0 and step.must_succeed:
            raise RuntimeError(f"{shlex.join(step.argv)} failed (exit {status}): {error.strip()}")
        done.append(shlex.join(step.argv) + ("" if status == 0 else "  (nothing to remove)"))
    return done
