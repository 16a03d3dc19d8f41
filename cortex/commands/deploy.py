"""`cortex deploy`: bring each host of a fleet to the newest cortex packages, then probe it.

A `cortex` command rather than a shell script: it ships inside the `cortex` package and
executable the operator already has, reads its inventory with the same strict TOML loader as
every other cortex file, runs the hosts concurrently while keeping each host's output in one
block, and probes each host with `cortex probe`'s own code; the tests drive it through the same
entry point. On the hosts it needs only `sh`, `rpm`, `dnf` and `systemctl`, reached by `ssh`.

The inventory (TOML; `--channel` overrides `channel`):

    channel = "stable"                        # stable | unstable (prereleases from main)
    ssh = ["ssh", "-o", "BatchMode=yes"]      # runs `sh -s` on a host: ssh ... HOST sh -s
    sudo = false                              # true: `sudo -n sh -s` (a non-root ssh user)
    [repository]
    stable = "https://pkgs.example.com/cortex/stable"
    unstable = "https://pkgs.example.com/cortex/unstable"
    gpgkey = ""                               # URL of the signing key; empty: no gpgcheck
    [probe]                                   # optional: cortex probe's --model, --prompt, ...
    model = "Qwen/Qwen3-8B"
    expect = "paris"
    [[hosts]]
    name = "gw.internal"
    roles = ["gateway"]                       # gateway: package cortex; neuron: helexa-neuron
    # address (ssh target, default: name), probe_url (default: http://NAME:31313 for a
    # gateway, :13131 for a neuron), installroot (default /: where dnf and rpm install)

For each host, each step one `sh -s` script through the runner:
1. `repository`: /etc/yum.repos.d/cortex.repo holds the `cortex` repository and, enabled only
   on the unstable channel, `cortex-unstable`; the file is written only when it differs.
2. `state`: per package, `rpm -q` gives the installed Version-Release ("not installed": needs
   an install); an installed one is checked with `dnf check-update --refresh` (100: needs an
   upgrade). Any other failure also counts as needing an upgrade, so that the install step
   runs and shows the package manager's real error.
3. Only when a package needs work: `stop` its unit if the unit file exists, `install` (dnf
   install for missing packages, dnf upgrade for installed ones), `start` (enable --now).
4. `probe`: `cortex probe` against the host (health, load, one answer, --expect).

A host that succeeds prints one line; a host that fails prints the failed step's whole output,
each line prefixed with `[host]`. The exit status is the number of hosts that failed (at most
100); an unreadable inventory exits 2 before any host is contacted. `--dry-run` prints each
host's commands and contacts no host.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cortex.commands.probe import DEFAULT_PROMPT, Probe
from cortex.config import Duration, _check, _check_choice, _load
from cortex.errors import EXIT_OK
from cortex.output import Output

CHANNELS = ("stable", "unstable")
REPO_FILE = "/etc/yum.repos.d/cortex.repo"
UNIT_DIR = "/usr/lib/systemd/system"
MAX_EXIT = 100
# dnf check-update's exit status when updates are available.
UPDATES_AVAILABLE = 100
# A package transaction can download a large neuron package: generous, but not forever.
STEP_TIMEOUT = 3600


@dataclass(frozen=True)
class Role:
    """What a role installs on a host, and where its probe goes."""

    package: str
    unit: str
    port: int


ROLES = {
    "gateway": Role("cortex", "cortex.service", 31313),
    "neuron": Role("helexa-neuron", "helexa-neuron.service", 13131),
}


@dataclass
class RepositorySection:
    stable: str
    unstable: str = ""
    gpgkey: str = ""


@dataclass
class ProbeSection:
    model: str = ""
    prompt: str = DEFAULT_PROMPT
    expect: str = ""
    timeout: Duration = Duration(600)


@dataclass
class HostEntry:
    name: str
    roles: list[str]
    address: str = ""
    probe_url: str = ""
    installroot: str = "/"


@dataclass
class Inventory:
    repository: RepositorySection
    hosts: list[HostEntry]
    channel: str = "stable"
    ssh: list[str] = field(default_factory=lambda: ["ssh", "-o", "BatchMode=yes"])
    sudo: bool = False
    probe: ProbeSection = field(default_factory=ProbeSection)
    path: Path | None = field(default=None, metadata={"internal": True})


def load_inventory(path: str | Path) -> Inventory:
    """Load and check an inventory file; `ConfigError` names the file, the key, the problem."""
    path = Path(path)
    inventory: Inventory = _load(Inventory, path)
    _check_choice(path, "channel", inventory.channel, CHANNELS)
    _check(path, "hosts", bool(inventory.hosts), "list at least one [[hosts]] entry")
    _check(path, "ssh", bool(inventory.ssh), "name the command that reaches a host")
    names: set[str] = set()
    for i, host in enumerate(inventory.hosts):
        key = f"hosts[{i}]"
        _check(path, f"{key}.name", host.name not in names, f"{host.name!r} is listed twice")
        names.add(host.name)
        _check(path, f"{key}.roles", bool(host.roles), "give at least one role")
        for role in host.roles:
            _check_choice(path, f"{key}.roles", role, tuple(ROLES))
        _check(path, f"{key}.installroot", host.installroot.startswith("/"), "not absolute")
    return inventory


def repo_file_text(repository: RepositorySection, channel: str) -> str:
    """The .repo file for `channel`: stable always on, unstable on only when asked for."""
    check = f"gpgcheck=1\ngpgkey={repository.gpgkey}\n" if repository.gpgkey else "gpgcheck=0\n"
    # A repository dnf cannot read must be an error, never skipped: a skipped one leaves the
    # host on its old version without a word (some dnf.conf files skip by default).
    check += "skip_if_unavailable=0\n"
    text = "# Written by cortex deploy; it is rewritten on every deploy.\n"
    text += f"[cortex]\nname=cortex (stable)\nbaseurl={repository.stable}\nenabled=1\n{check}"
    if repository.unstable:
        enabled = int(channel == "unstable")
        text += (
            f"\n[cortex-unstable]\nname=cortex (unstable: prereleases from main)\n"
            f"baseurl={repository.unstable}\nenabled={enabled}\n{check}"
        )
    return text


class Commands:
    """The shell text of each step on one host (shared by the real run and `--dry-run`)."""

    def __init__(self, host: HostEntry) -> None:
        root = host.installroot.rstrip("/")
        self.root = root
        self.rpm = f"rpm --root={shlex.quote(root)}" if root else "rpm"
        self.dnf = f"dnf --installroot={shlex.quote(root)}" if root else "dnf"
        self.repo_file = root + REPO_FILE

    def repository(self, text: str) -> str:
        """Write the .repo file only when its content differs: idempotent."""
        path = shlex.quote(self.repo_file)
        want = shlex.quote(text.rstrip("\n"))
        return (
            f"f={path}; want={want}\n"
            'if [ "$(cat "$f" 2>/dev/null)" != "$want" ]; then\n'
            '  mkdir -p "$(dirname "$f")" && printf \'%s\\n\' "$want" > "$f" && echo "wrote $f"\n'
            "fi\n"
        )

    def query(self, package: str) -> str:
        """The installed Version-Release of `package` (exit 1: not installed)."""
        return f"{self.rpm} -q --qf '%{{VERSION}}-%{{RELEASE}}\\n' {package}"

    def check_update(self, package: str) -> str:
        """Exit 100 when the repositories offer a newer `package`, 0 when none."""
        return f"{self.dnf} check-update --refresh {package}"

    def stop(self, units: list[str]) -> str:
        """Stop each unit whose unit file exists (a first install has none to stop)."""
        return "\n".join(
            f"if [ -e {shlex.quote(self.root + UNIT_DIR + '/' + u)} ]; then systemctl stop {u}; fi"
            for u in units
        )

    def install(self, missing: list[str], outdated: list[str]) -> str:
        """dnf install for what is missing, dnf upgrade for what is installed. `--refresh`:
        never from a cached copy of a repository that is broken now, so its error shows."""
        parts = [f"{self.dnf} -y --refresh install {' '.join(missing)}"] if missing else []
        parts += [f"{self.dnf} -y --refresh upgrade {' '.join(outdated)}"] if outdated else []
        return " && ".join(parts)

    def start(self, units: list[str]) -> str:
        """Start the units, and enable them so that they come back after a reboot."""
        return f"systemctl enable --now {' '.join(units)}"


@dataclass
class HostResult:
    """How one host went: one line, and the output of the step that failed."""

    name: str
    ok: bool
    summary: str
    output: str = ""


class StepFailed(Exception):
    """A step exited non-zero; carries its whole output."""

    def __init__(self, step: str, code: int, output: str) -> None:
        super().__init__(f"{step} failed (exit {code})")
        self.step = step
        self.output = output


class HostDeploy:
    """The deploy of one host: its steps through the runner, in order."""

    def __init__(self, inventory: Inventory, host: HostEntry, channel: str, probe: bool) -> None:
        self.inventory = inventory
        self.host = host
        self.channel = channel
        self.probe = probe
        self.commands = Commands(host)
        self.roles = [ROLES[r] for r in host.roles]

    @property
    def runner(self) -> list[str]:
        """argv that runs a script (on stdin) on the host."""
        sudo = ["sudo", "-n"] if self.inventory.sudo else []
        return [*self.inventory.ssh, self.host.address or self.host.name, *sudo, "sh", "-s"]

    @property
    def probe_url(self) -> str:
        """The probe's target: the inventory's, else the first role's port on the host."""
        return self.host.probe_url or f"http://{self.host.name}:{self.roles[0].port}"

    def sh(self, step: str, script: str, check: bool = True) -> tuple[int, str]:
        """Run `script` on the host: its exit code and its stdout and stderr, interleaved.
        With `check`, a non-zero exit raises `StepFailed` with that output."""
        try:
            done = subprocess.run(
                self.runner,
                input=script,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=STEP_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StepFailed(step, -1, str(exc)) from None
        if check and done.returncode != 0:
            raise StepFailed(step, done.returncode, done.stdout)
        return done.returncode, done.stdout

    def installed(self, package: str) -> str | None:
        """The installed Version-Release; None when not installed (or the query failed)."""
        code, output = self.sh("state", self.commands.query(package), check=False)
        return output.strip() if code == 0 else None

    def needs_upgrade(self, package: str) -> bool:
        """True unless dnf says, without error, that no newer `package` is offered."""
        code, _ = self.sh("state", self.commands.check_update(package), check=False)
        return code != 0

    def run(self) -> HostResult:
        """Every step; the host's result (a failed step ends it, and is reported)."""
        try:
            return self._run()
        except StepFailed as exc:
            return HostResult(self.host.name, False, str(exc), exc.output)

    def _run(self) -> HostResult:
        text = repo_file_text(self.inventory.repository, self.channel)
        self.sh("repository", self.commands.repository(text))
        before = {role.package: self.installed(role.package) for role in self.roles}
        missing = [p for p, version in before.items() if version is None]
        outdated = [p for p in before if p not in missing and self.needs_upgrade(p)]
        work = [role for role in self.roles if role.package in missing + outdated]
        if work:
            units = [role.unit for role in work]
            self.sh("stop", self.commands.stop(units))
            self.sh("install", self.commands.install(missing, outdated))
            self.sh("start", self.commands.start(units))
        changes = []
        for role in self.roles:
            old = before[role.package]
            new = self.installed(role.package) if role in work else old
            if new == old:
                changes.append(f"{role.package} {old} already current")
            else:
                changes.append(f"{role.package} {old or 'not installed'} -> {new}")
        if self.probe:
            changes.append(self._probe())
        return HostResult(self.host.name, True, "; ".join(changes))

    def _probe(self) -> str:
        spec = self.inventory.probe
        probe = Probe(self.probe_url, spec.model or None, float(spec.timeout))
        if probe.run(spec.prompt, spec.expect or None) != EXIT_OK:
            lines = [f"{s.name}: {'ok' if s.ok else 'FAILED'}: {s.detail}" for s in probe.steps]
            raise StepFailed("probe", 1, "\n".join(lines))
        return f"probe ok ({sum(s.seconds for s in probe.steps):.1f}s)"

    def plan(self) -> list[str]:
        """What `run` would do, as the commands it would send (for `--dry-run`)."""
        c = self.commands
        packages = [role.package for role in self.roles]
        units = [role.unit for role in self.roles]
        text = repo_file_text(self.inventory.repository, self.channel)
        lines = [f"via: {shlex.join(self.runner)}", f"{c.repo_file}, written when it differs:"]
        lines += [f"  {line}" for line in text.splitlines()]
        for package in packages:
            lines += [c.query(package), f"{c.check_update(package)}   # when installed"]
        lines.append(f"when {' or '.join(packages)} is missing or outdated:")
        lines += [f"  {line}" for line in c.stop(units).splitlines()]
        lines.append(f"  {c.install(packages, [])}   # when missing")
        lines.append(f"  {c.install([], packages)}   # when installed")
        lines.append(f"  {c.start(units)}")
        if self.probe:
            spec = self.inventory.probe
            probe = ["cortex", "probe", "--url", self.probe_url, "--prompt", spec.prompt]
            probe += ["--model", spec.model] if spec.model else []
            probe += ["--expect", spec.expect] if spec.expect else []
            lines.append(shlex.join(probe))
        return lines


def prefixed(name: str, text: str) -> str:
    """Each line of `text` as `[name] line`."""
    return "\n".join(f"[{name}] {line}" for line in text.rstrip("\n").splitlines())


def run_deploy(
    inventory_path: str,
    channel: str | None,
    only: list[str],
    probe: bool,
    dry_run: bool,
    out: Output,
) -> int:
    """Deploy every host (or the `only` ones) concurrently; the number of hosts that failed."""
    inventory = load_inventory(inventory_path)
    channel = channel or inventory.channel
    _check_choice(inventory.path, "--channel", channel, CHANNELS)
    _check(
        inventory.path,
        "repository.unstable",
        channel != "unstable" or bool(inventory.repository.unstable),
        "the unstable channel needs the unstable repository's URL",
    )
    unknown = sorted(set(only) - {h.name for h in inventory.hosts})
    _check(inventory.path, "hosts", not unknown, f"no host named {', '.join(unknown)}")
    hosts = [h for h in inventory.hosts if not only or h.name in only]
    deploys = [HostDeploy(inventory, host, channel, probe) for host in hosts]
    if dry_run:
        for deploy in deploys:
            out.result(None, prefixed(deploy.host.name, "\n".join(deploy.plan())))
        return EXIT_OK
    lock = threading.Lock()

    def report(deploy: HostDeploy) -> HostResult:
        result = deploy.run()
        text = f"ok: {result.summary}" if result.ok else f"FAILED: {result.summary}"
        if result.output:
            text += "\n" + result.output
        with lock:  # one host's block at a time, as each host finishes
            out.result(None, prefixed(result.name, text))
        return result

    with ThreadPoolExecutor(max_workers=len(deploys)) as pool:
        results = list(pool.map(report, deploys))
    failed = sum(not r.ok for r in results)
    if failed:
        out.log(f"cortex: deploy failed on {failed} of {len(results)} hosts")
    return min(failed, MAX_EXIT)
