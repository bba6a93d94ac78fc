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

:class:`PrivateDockerd` is a dockerd of our own (own data root, exec root, socket): images stay
cached in ``~/.cache/messages-compose`` between runs, and on exit it stops the daemon and puts
back what dockerd changes on the host (the iptables rules and FORWARD policy, ``ip_forward``,
the ``docker0`` bridge). ``tests/test_compose_stack.py`` uses both.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
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
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / "deploy" / "standins"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "messages-compose"
BASE_IMAGE = "local/debian:bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Which stand-in (a folder of deploy/standins) plays which upstream repository.
STANDIN_FOR = {"python": "python", "redis": "redis", "mysql": "mysql", "nginx": "nginx"}
# Debian packages providing the commands this needs, installed when missing.
PACKAGES = {
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
    "iptables-save": "iptables",
}


def log(message: str) -> None:
    print(f"docker_engine: {message}", file=sys.stderr, flush=True)


def ensure_tools() -> None:
    """Install Debian's docker.io, docker-compose, debootstrap and iptables if a command is missing."""
    missing = sorted({package for command, package in PACKAGES.items() if shutil.which(command) is None})
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


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
        repository = image.split(":")[0].rsplit("/", 1)[-1]
        if repository not in STANDIN_FOR:
            raise SystemExit(f"docker_engine: no stand-in for {image} (deploy/standins/ has {sorted(STANDIN_FOR)})")
        started = time.monotonic()
        log(f"building {image} from deploy/standins/{STANDIN_FOR[repository]}")
        built = _docker(
            env, "build", "-t", image, str(STANDINS / STANDIN_FOR[repository]), capture_output=True, text=True
        )
        if built.returncode != 0:
            raise RuntimeError(
                f"building the stand-in for {image} failed:\n{built.stdout[-4000:]}{built.stderr[-2000:]}"
            )
        timings[image] = time.monotonic() - started
    return timings


def compose_v2_config(cache: Path = CACHE) -> Path:
    """A ``DOCKER_CONFIG`` folder whose ``cli-plugins`` hold compose v2, so ``docker compose`` works too.

    Bookworm has only v1 (``docker-compose`` 1.29); trixie packages v2, a static Go binary. Its
    ``.deb`` is fetched from the mirror (checked against the SHA-256 the signed index gives) and
    only the plugin is taken out, leaving the host's packages alone.
    """
    config = cache / "docker-config"
    plugin = config / "cli-plugins" / "docker-compose"
    if plugin.exists():
        return config
    architecture = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
    index_url = f"{DEBIAN_MIRROR}/dists/trixie/main/binary-{architecture.stdout.strip()}/Packages.xz"
    with urllib.request.urlopen(index_url, timeout=120) as response:  # noqa: S310 - the configured mirror
        index = lzma.decompress(response.read()).decode()
    stanza = next(part for part in index.split("\n\n") if part.startswith("Package: docker-compose\n"))
    fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
    log(f"fetching compose v2 ({fields['Version']}) from {DEBIAN_MIRROR}")
    with urllib.request.urlopen(f"{DEBIAN_MIRROR}/{fields['Filename']}", timeout=300) as response:  # noqa: S310
        package = response.read()
    if hashlib.sha256(package).hexdigest() != fields["SHA256"]:
        raise RuntimeError(f"{fields['Filename']} does not match the index's SHA-256")
    with tempfile.TemporaryDirectory() as tmp:
        deb = Path(tmp) / "compose.deb"
        deb.write_bytes(package)
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        plugin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "usr/libexec/docker/cli-plugins/docker-compose", plugin)
    return config


def _read(path: str) -> str:
    return Path(path).read_text()


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


class PrivateDockerd:
    """A dockerd of our own for the length of a ``with`` block, leaving the host as it found it.

    Only one runs per cache directory at a time (a lock file); a second waits for the first.
    """

    def __init__(self, cache: Path = CACHE) -> None:
        self.cache = cache
        self.runtime = Path(tempfile.mkdtemp(prefix="dkd-", dir="/tmp"))  # short: it holds unix sockets
        self.socket = self.runtime / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.log_path = self.runtime / "dockerd.log"
        self.process: subprocess.Popen | None = None
        self._lock: int | None = None
        self._saved: dict[str, str] = {}
        self.host_before: dict[str, object] = {}  # host_state() once the lock is held, before dockerd starts

    def __enter__(self) -> PrivateDockerd:
        self.cache.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.cache / "lock", os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.host_before = host_state()
        try:
            self._save_host()
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _save_host(self) -> None:
        self._saved = {
            "iptables": subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout,
            "ip_forward": _read("/proc/sys/net/ipv4/ip_forward"),
            "docker0": "yes" if _link_exists("docker0") else "",
        }
        if shutil.which("ip6tables-save"):
            saved = subprocess.run(["ip6tables-save"], capture_output=True, text=True)
            if saved.returncode == 0:
                self._saved["ip6tables"] = saved.stdout

    def _start(self) -> None:
        (self.runtime / "exec").mkdir()
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    "--data-root", str(self.cache / "docker"),
                    "--exec-root", str(self.runtime / "exec"),
                    "--pidfile", str(self.runtime / "dockerd.pid"),
                    "-H", f"unix://{self.socket}",
                    "--storage-driver", "overlay2",
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

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._stop()
        finally:
            self._restore_host()
            shutil.rmtree(self.runtime, ignore_errors=True)
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def _stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Containers still running (a failed test) are stopped by dockerd's own shutdown.
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        # dockerd's containerd and shims live in its exec root; none may outlive it.
        leftovers = subprocess.run(["pgrep", "-f", str(self.runtime)], capture_output=True, text=True).stdout.split()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def _restore_host(self) -> None:
        if not self._saved:
            return
        subprocess.run(["iptables-restore"], input=with_default_tables(self._saved["iptables"]), text=True, check=True)
        if "ip6tables" in self._saved:
            subprocess.run(
                ["ip6tables-restore"], input=with_default_tables(self._saved["ip6tables"]), text=True, check=False
            )
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self._saved["ip_forward"])
        if not self._saved["docker0"] and _link_exists("docker0"):
            subprocess.run(["ip", "link", "delete", "docker0"], check=False)
        # Mounts dockerd leaves under its data root (overlay layers of killed containers).
        for line in reversed(_read("/proc/mounts").splitlines()):
            mountpoint = line.split()[1]
            if mountpoint.startswith((str(self.cache / "docker"), str(self.runtime))):
                subprocess.run(["umount", "-l", mountpoint], check=False)


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
    }


@contextlib.contextmanager
def private_engine_with_standins() -> Iterator[PrivateDockerd]:
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
