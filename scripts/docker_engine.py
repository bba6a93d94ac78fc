"""Run the compose stack where no container registry is reachable: a private dockerd and stand-in images.

    python scripts/docker_engine.py images       # build the stand-in base images into $DOCKER_HOST's engine
    python scripts/docker_engine.py shell        # start a private dockerd, build the stand-ins, open a shell
                                                 # with DOCKER_HOST set; leaving it stops the daemon

Our CI machines have Debian's ``docker.io`` (dockerd 20.10) and ``docker-compose`` (1.29, the v1
tool the design names) but no registry, so ``python:3.11-slim``, ``redis:7``, ``mysql:8`` and
``nginx:1.28-alpine`` cannot be pulled. :func:`build_standins` builds look-alikes from Debian
packages (``deploy/standins/``) and tags them with the names our ``Dockerfile`` and
``docker-compose.yml`` use, read from those files, so both run unchanged. A machine that can
pull the real images needs none of this.

:class:`PrivateDockerd` is a dockerd of our own (own data root, exec root, socket, daemon.json,
containerd namespace): images stay cached in ``/var/lib/messages-compose`` between runs
(``DOCKER_ENGINE_CACHE`` moves it), and on exit it removes its containers, stops the daemon and
puts back what dockerd changes on the host (the iptables rules and FORWARD policy,
``ip_forward``, the ``docker0`` bridge), also after a run that was killed before it could.
:func:`compose_v2_config` adds compose v2. ``tests/system/test_compose_stack.py`` uses all three.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / "deploy" / "standins"
# Images, the compose v2 plugin and the engine's state between runs (several GB once built); root's, like
# /var/lib/docker. DOCKER_ENGINE_CACHE moves it (e.g. to start cold).
CACHE = Path(os.environ.get("DOCKER_ENGINE_CACHE") or "/var/lib/messages-compose")
BASE_IMAGE = "local/debian:bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")


@dataclass(frozen=True)
class StandIn:
    """A folder of deploy/standins, and how to check it is the version the upstream tag names."""

    folder: str
    version_command: tuple[str, ...] | None  # None: another product plays the part (MariaDB for MySQL)
    newer_ok: bool = False  # the tag's version or a newer one will do


# Which stand-in plays which upstream repository.
STANDIN_FOR = {
    "python": StandIn("python", ("python3", "--version")),
    "redis": StandIn("redis", ("redis-server", "--version")),
    "mysql": StandIn("mysql", None),
    # deploy/nginx.conf needs the upstream "resolve" parameter (1.27.3+): forky's is newer than the tag.
    "nginx": StandIn("nginx", ("nginx", "-v"), newer_ok=True),
}
_VERSION = re.compile(r"\d+(?:\.\d+)+")
# Debian packages providing the commands this needs, installed when missing.
PACKAGES = {
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
    "iptables-save": "iptables",
    "ip": "iproute2",
    "ps": "procps",
    "gpgv": "gpgv",
}
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
CGROUP_PARENT = "messages-compose"


def log(message: str) -> None:
    print(f"docker_engine: {message}", file=sys.stderr, flush=True)


def ensure_tools() -> None:
    """Install Debian's docker.io, docker-compose, debootstrap and iptables if a command is missing."""
    missing = sorted({package for command, package in PACKAGES.items() if shutil.which(command) is None})
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Installing docker.io must not start (or enable) the system's Docker service: a policy-rc.d
    # that refuses every service start, for the length of the install only.
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if added_policy:
            policy.unlink()


def upstream_images(root: Path = ROOT) -> list[str]:
    """The images our Dockerfile builds from and the default compose services run, as written there."""
    images = [line.split()[1] for line in (root / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    for service in services.values():
        if "image" in service and "build" not in service and not service.get("profiles"):
            images.append(service["image"])
    return list(dict.fromkeys(images))


def _docker(env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], env=env, **kwargs)


def has_image(env: dict[str, str], name: str) -> bool:
    return _docker(env, "image", "inspect", name, capture_output=True).returncode == 0


def build_base_image(env: dict[str, str]) -> float:
    """Import a debootstrapped Debian bookworm as ``local/debian:bookworm``; return the seconds taken (0 if cached).

    The host's locally added CA certificates go in too: the registries may be reached through a
    TLS-intercepting proxy, and the stand-ins' ``ca-certificates`` then trusts it as the host does.
    """
    if has_image(env, BASE_IMAGE):
        return 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap bookworm from {DEBIAN_MIRROR}")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        local_cas = rootfs / "usr/local/share/ca-certificates"
        local_cas.mkdir(parents=True, exist_ok=True)
        for certificate in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(certificate, local_cas)
        # apt inside the image keeps no package cache and installs no recommends, as Docker's debian images.
        (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
            'APT::Install-Recommends "false";\nDPkg::Post-Invoke {"rm -f /var/cache/apt/archives/*.deb || true";};\n'
        )
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        _docker(env, "import", "-", BASE_IMAGE, stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        assert tar.wait() == 0
    return time.monotonic() - started


def build_standins(env: dict[str, str], root: Path = ROOT) -> dict[str, float]:
    """Build a stand-in for every upstream image our files name; return seconds per image.

    ``docker build`` runs every time: its layer cache makes an unchanged stand-in a no-op, and a
    changed one is rebuilt.
    """
    timings = {BASE_IMAGE: build_base_image(env)}
    for image in upstream_images(root):
        repository, _, tag = image.rpartition("/")[-1].partition(":")
        standin = STANDIN_FOR.get(repository)
        if standin is None:
            raise SystemExit(f"docker_engine: no stand-in for {image} (deploy/standins/ has {sorted(STANDIN_FOR)})")
        started = time.monotonic()
        log(f"building {image} from deploy/standins/{standin.folder}")
        built = _docker(env, "build", "-t", image, str(STANDINS / standin.folder), capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeError(
                f"building the stand-in for {image} failed:\n{built.stdout[-4000:]}{built.stderr[-2000:]}"
            )
        check_version(env, image, tag, standin)
        timings[image] = time.monotonic() - started
    return timings


def check_version(env: dict[str, str], image: str, tag: str, standin: StandIn) -> None:
    """Fail unless the stand-in runs the version its tag names (e.g. 3.11.x for python:3.11-slim)."""
    if standin.version_command is None:
        return
    command, *args = standin.version_command
    ran = _docker(env, "run", "--rm", "--entrypoint", command, image, *args, capture_output=True, text=True)
    found = _VERSION.search(ran.stdout + ran.stderr)
    wanted = re.match(r"\d+(?:\.\d+)*", tag)
    if not found or not wanted:
        raise RuntimeError(f"cannot tell the version of {image}: {ran.stdout + ran.stderr!r}")
    have = [int(part) for part in found.group().split(".")]
    need = [int(part) for part in wanted.group().split(".")]
    if not (have >= need if standin.newer_ok else have[: len(need)] == need):
        raise RuntimeError(f"the stand-in for {image} runs {found.group()}")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as response:  # noqa: S310 - the configured Debian mirror
        return response.read()


def _checked(data: bytes, sha256: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{what} does not match the SHA-256 the signed Release file gives")
    return data


def compose_v2_config(cache: Path = CACHE) -> Path:
    """A ``DOCKER_CONFIG`` folder whose ``cli-plugins`` hold compose v2, so ``docker compose`` works too.

    Bookworm has only v1 (``docker-compose`` 1.29); trixie packages v2, a static Go binary. It is
    fetched as apt would: trixie's ``InRelease`` checked with gpgv against the host's Debian archive
    keyring, the package index against the SHA-256 the verified Release gives, the ``.deb``
    against the index's. Only the plugin is taken out; the host's packages are left alone.
    """
    config = cache / "docker-config"
    plugin = config / "cli-plugins" / "docker-compose"
    if plugin.exists():
        return config
    architecture = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
    index_path = f"main/binary-{architecture.stdout.strip()}/Packages.xz"
    with tempfile.TemporaryDirectory() as tmp:
        signed = Path(tmp) / "InRelease"
        signed.write_bytes(_fetch(f"{DEBIAN_MIRROR}/dists/trixie/InRelease"))
        release = subprocess.run(
            ["gpgv", "--keyring", str(KEYRING), "--output", "-", str(signed)], capture_output=True, check=True
        ).stdout.decode()
        sums = release.split("\nSHA256:\n", 1)[1]
        index_sum = next(line.split()[0] for line in sums.splitlines() if line.split()[-1:] == [index_path])
        index = lzma.decompress(
            _checked(_fetch(f"{DEBIAN_MIRROR}/dists/trixie/{index_path}"), index_sum, index_path)
        ).decode()
        stanza = next(part for part in index.split("\n\n") if part.startswith("Package: docker-compose\n"))
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        log(f"fetching compose v2 ({fields['Version']}) from {DEBIAN_MIRROR}")
        deb = Path(tmp) / "compose.deb"
        deb.write_bytes(_checked(_fetch(f"{DEBIAN_MIRROR}/{fields['Filename']}"), fields["SHA256"], fields["Filename"]))
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        plugin.parent.mkdir(parents=True, exist_ok=True)
        partial = plugin.with_suffix(".partial")  # renamed into place whole: never a truncated plugin
        shutil.copy(Path(tmp) / "usr/libexec/docker/cli-plugins/docker-compose", partial)
        partial.replace(plugin)
    return config


def _read(path: str) -> str:
    return Path(path).read_text()


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


class PrivateDockerd:
    """A dockerd of our own for the length of a ``with`` block, leaving the host as it found it.

    Only one runs per cache directory at a time (a lock file); a second waits for the first. What it
    must restore is written to ``engine-state.json`` in the cache before dockerd starts, so a run
    killed before its clean-up (a CI timeout, SIGKILL) is cleaned up by the next one.
    """

    def __init__(self, cache: Path = CACHE) -> None:
        self.cache = cache
        self.runtime = Path(tempfile.mkdtemp(prefix="dkd-", dir="/tmp"))  # short: it holds unix sockets
        self.socket = self.runtime / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.log_path = self.runtime / "dockerd.log"
        self.state_path = cache / "engine-state.json"
        self.process: subprocess.Popen | None = None
        self._lock: int | None = None
        self.host_before: dict[str, object] = {}  # host_state() under the lock, before dockerd starts
        self.host_after: dict[str, object] = {}  # host_state() once restored, still under the lock

    def __enter__(self) -> PrivateDockerd:
        self.cache.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.cache / "lock", os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._recover_interrupted_run()
            self.host_before = host_state()
            self._write_state({"runtime": str(self.runtime), "saved": saved_host()})
            self._start()
            self._write_state({**self._read_state(), "pid": self.process.pid})
            self._remove_everything()  # containers, networks, volumes an interrupted run left
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _write_state(self, state: dict) -> None:
        partial = self.state_path.with_suffix(".partial")
        partial.write_text(json.dumps(state))
        partial.replace(self.state_path)

    def _read_state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def _recover_interrupted_run(self) -> None:
        if not self.state_path.exists():
            return
        state = self._read_state()
        log(f"cleaning up after an interrupted run (engine runtime {state['runtime']})")
        pid = state.get("pid")
        if pid and "dockerd" in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _kill_naming(state["runtime"])
        _kill_containers_left_running()
        restore_host(state["saved"], [self.cache / "docker", Path(state["runtime"])])
        shutil.rmtree(state["runtime"], ignore_errors=True)
        self.state_path.unlink()

    def _start(self) -> None:
        (self.runtime / "exec").mkdir()
        # An empty daemon.json of its own: the host's /etc/docker/daemon.json is not ours to read.
        config = self.runtime / "daemon.json"
        config.write_text("{}")
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    "--config-file", str(config),
                    "--data-root", str(self.cache / "docker"),
                    "--exec-root", str(self.runtime / "exec"),
                    "--pidfile", str(self.runtime / "dockerd.pid"),
                    "-H", f"unix://{self.socket}",
                    "--storage-driver", "overlay2",
                    # Apart from a system dockerd's containers should a system containerd be running.
                    "--containerd-namespace", "messages-compose",
                    "--containerd-plugins-namespace", "messages-compose-plugins",
                    # Containers' cgroups under a parent of ours, where a later run finds what a
                    # killed one left running (container processes outlive a SIGKILLed dockerd).
                    "--cgroup-parent", CGROUP_PARENT,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while _docker(self.env, "info", capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def _remove_everything(self) -> None:
        """Every container, network and volume of this engine: it is private, so all of them are ours."""
        containers = _docker(self.env, "ps", "-aq", capture_output=True, text=True).stdout.split()
        if containers:
            _docker(self.env, "rm", "-f", "-v", *containers, capture_output=True)
        _docker(self.env, "network", "prune", "-f", capture_output=True)
        _docker(self.env, "volume", "prune", "-f", capture_output=True)

    def __exit__(self, *exc_info: object) -> None:
        errors: list[BaseException] = []
        for step in (self._remove_leftovers, self._stop):
            try:
                step()
            except Exception as exc:  # every clean-up step runs, whatever an earlier one did
                errors.append(exc)
        if self.state_path.exists():
            try:
                restore_host(self._read_state()["saved"], [self.cache / "docker", self.runtime])
                self.state_path.unlink()
            except Exception as exc:
                errors.append(exc)
        self.host_after = host_state()
        shutil.rmtree(self.runtime, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if errors:
            raise RuntimeError(f"cleaning up the private dockerd failed: {errors}") from errors[0]

    def _remove_leftovers(self) -> None:
        """Containers still there (a failed test) and images no tag names any more (old app builds)."""
        if self.process is not None and self.process.poll() is None:
            self._remove_everything()
            _docker(self.env, "image", "prune", "-f", capture_output=True)

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # dockerd's containerd and shims name its exec root; none may outlive it, nor a container.
        _kill_naming(str(self.runtime))
        _kill_containers_left_running()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_containers_left_running() -> None:
    """SIGKILL every process in our containers' cgroups and remove those cgroups (v1 and v2 layouts)."""
    root = Path("/sys/fs/cgroup")
    parents = [*root.glob(f"*/{CGROUP_PARENT}"), root / CGROUP_PARENT]
    for parent in (path for path in parents if path.is_dir()):
        for procs in parent.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)
        for folder in sorted((path for path in parent.rglob("*") if path.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            parent.rmdir()


def _kill_naming(text: str) -> None:
    """SIGKILL every process whose command line contains ``text``."""
    found = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout.split()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


# Files and folders dockerd and containerd create outside the roots given to them (the daemon's
# trust key, plugin and shim sockets): removed afterwards unless they were there before.
CREATED_OUTSIDE_ROOTS = ("/etc/docker/key.json", "/run/docker", "/run/containerd")
# Sysctls dockerd sets (once br_netfilter is loaded, which stays loaded).
SYSCTLS = ("net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables")


def _sysctls() -> dict[str, str]:
    return {name: _read(f"/proc/sys/{name}").strip() for name in SYSCTLS if os.path.exists(f"/proc/sys/{name}")}


def saved_host() -> dict:
    """What dockerd changes on the host, as ``restore_host`` puts it back."""
    saved = {
        "iptables": subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout,
        "ip_forward": _read("/proc/sys/net/ipv4/ip_forward"),
        "docker0": "yes" if _link_exists("docker0") else "",
        "absent": [path for path in CREATED_OUTSIDE_ROOTS if not os.path.lexists(path)],
        "sysctls": _sysctls(),
    }
    if shutil.which("ip6tables-save"):
        ip6 = subprocess.run(["ip6tables-save"], capture_output=True, text=True)
        if ip6.returncode == 0:
            saved["ip6tables"] = ip6.stdout
    return saved


def restore_host(saved: dict, mounted_under: list[Path]) -> None:
    """Put back ``saved_host()``'s state and unmount what dockerd left under ``mounted_under``.

    Every step is tried; the first failure is raised once all have run.
    """
    steps = [
        lambda: subprocess.run(
            ["iptables-restore"], input=with_default_tables(saved["iptables"]), text=True, check=True
        ),
        lambda: Path("/proc/sys/net/ipv4/ip_forward").write_text(saved["ip_forward"]),
    ]
    if "ip6tables" in saved:
        steps.append(
            lambda: subprocess.run(
                ["ip6tables-restore"], input=with_default_tables(saved["ip6tables"]), text=True, check=False
            )
        )
    if not saved["docker0"]:
        steps.append(lambda: _link_exists("docker0") and subprocess.run(["ip", "link", "delete", "docker0"]))
    for name, value in saved.get("sysctls", {}).items():
        steps.append(lambda name=name, value=value: Path(f"/proc/sys/{name}").write_text(value))
    for path in saved.get("absent", []):
        steps.append(lambda path=path: Path(path).is_dir() and shutil.rmtree(path, ignore_errors=True))
        steps.append(lambda path=path: Path(path).is_file() and Path(path).unlink())
    prefixes = tuple(str(path) for path in mounted_under)
    for line in reversed(_read("/proc/mounts").splitlines()):
        mountpoint = line.split()[1]
        if mountpoint.startswith(prefixes):
            steps.append(lambda mountpoint=mountpoint: subprocess.run(["umount", "-l", mountpoint]))
    errors = []
    for step in steps:
        try:
            step()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


# The tables dockerd writes to, as a host without rules has them: iptables-restore replaces only the
# tables it is given, so a table the host had no rules in must be given empty to drop dockerd's chains.
DEFAULT_TABLES = {
    "filter": ["INPUT", "FORWARD", "OUTPUT"],
    "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
}


def with_default_tables(saved: str) -> str:
    """``saved`` (iptables-save output) plus an empty, all-ACCEPT table for each table dockerd uses that it lacks."""
    present = set(re.findall(r"^\*(\w+)", saved, re.MULTILINE))
    extra = [
        "\n".join([f"*{table}", *(f":{chain} ACCEPT [0:0]" for chain in chains), "COMMIT"])
        for table, chains in DEFAULT_TABLES.items()
        if table not in present
    ]
    return "\n".join([saved.rstrip("\n"), *extra]).lstrip("\n") + "\n"


def host_state() -> dict[str, object]:
    """What dockerd changes on the host, comparable before and after: rules and chains, forwarding, docker0.

    A table present but empty equals one never used (ACCEPT policies and counters are left out).
    """
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    rules = sorted(
        re.sub(r" \[\d+:\d+\]$", "", line)
        for line in saved.splitlines()
        if line.startswith(("-", ":")) and not re.fullmatch(r":[A-Z]+ ACCEPT \[\d+:\d+\]", line)
    )
    return {
        "iptables": rules,
        "ip_forward": _read("/proc/sys/net/ipv4/ip_forward").strip(),
        "docker0": _link_exists("docker0"),
        "created": [path for path in CREATED_OUTSIDE_ROOTS if os.path.lexists(path)],
        "sysctls": _sysctls(),
    }


@contextlib.contextmanager
def private_engine_with_standins() -> Iterator[PrivateDockerd]:
    """Install what is missing, start a private dockerd and build the stand-ins on it."""
    ensure_tools()
    with PrivateDockerd() as engine:
        for image, seconds in build_standins(engine.env).items():
            log(f"{image}: {seconds:.1f} s")
        yield engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["images", "shell"])
    args = parser.parse_args()
    if args.command == "images":
        ensure_tools()
        for image, seconds in build_standins(dict(os.environ)).items():
            log(f"{image}: {seconds:.1f} s")
        return
    with private_engine_with_standins() as engine:
        log(f"DOCKER_HOST={engine.env['DOCKER_HOST']}; exit the shell to stop the daemon")
        subprocess.run([os.environ.get("SHELL", "/bin/sh")], env=engine.env, cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
