"""The lab's kernels: Debian images and their DWARF, fetched into a cache.

Each known kernel is a Debian meta package in a suite; the real image package (and so the
kernel release) is resolved from the meta package's Depends at run time, because package
versions move (in sid especially).  Everything is downloaded with a private apt
configuration (its own sources list, lists and cache directories) so that the system's apt
sources are never touched.

Cache layout (``$MEMSCOPE_CACHE``, default ``~/.cache/memscope``)::

    apt/                       private apt state (lists, downloaded .debs are deleted)
    kernels/<name>/            one directory per kernel, renamed into place when complete
        vmlinuz vmlinux config System.map modules/qemu_fw_cfg.ko busybox info.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import LabError

# MEMSCOPE_ARCHIVE overrides the Debian mirror (a local mirror; the tests use it to check
# the error when the archive cannot be reached).
ARCHIVE = os.environ.get("MEMSCOPE_ARCHIVE", "http://deb.debian.org/debian")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SUITES = ("bullseye", "bookworm", "trixie", "sid")
# busybox-static is taken from one suite for every kernel; any static build runs on all.
BUSYBOX_SUITE = "bookworm"
# Modules the guest needs: qemu_fw_cfg exposes VMCOREINFO to QEMU's vmcoreinfo device,
# without which drgn refuses the dump.
GUEST_MODULES = ("qemu_fw_cfg",)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    name: str
    suite: str
    meta: str  # the meta package whose Depends names the real image package
    arch: str  # Debian architecture
    qemu_arch: str  # uname -m

    @property
    def qemu(self) -> str:
        return {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}[self.qemu_arch]


KERNELS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec("5.10", "bullseye", "linux-image-cloud-amd64", "amd64", "x86_64"),
        KernelSpec("6.1", "bookworm", "linux-image-cloud-amd64", "amd64", "x86_64"),
        KernelSpec("6.12", "trixie", "linux-image-cloud-amd64", "amd64", "x86_64"),
        KernelSpec("7.2", "sid", "linux-image-cloud-amd64", "amd64", "x86_64"),
        # The generic arm64 flavour has CONFIG_CMA (64 MiB by default); 7.2 also
        # CONFIG_CMA_SYSFS and multi-range areas (struct cma_memrange).
        KernelSpec("6.12-arm64", "trixie", "linux-image-arm64", "arm64", "aarch64"),
        KernelSpec("7.2-arm64", "sid", "linux-image-arm64", "arm64", "aarch64"),
    )
}
DEFAULT_KERNEL = "6.12"


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A fetched kernel: paths into the cache."""

    spec: KernelSpec
    root: Path
    release: str
    image_package: str
    version: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        return self.root / "vmlinux"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def busybox(self) -> Path:
        return self.root / "busybox"

    @property
    def modules(self) -> list[Path]:
        return sorted((self.root / "modules").glob("*.ko"))


def cache_dir() -> Path:
    return Path(os.environ.get("MEMSCOPE_CACHE") or Path.home() / ".cache" / "memscope")


def spec(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except KeyError:
        raise LabError(
            f"unknown kernel {name!r}: known kernels are {', '.join(KERNELS)} "
            "(see 'memscope lab kernels')", exit_status=2) from None


def cached(name: str) -> Kernel | None:
    """The cached kernel NAME, or None when it has not been fetched (completely)."""
    root = cache_dir() / "kernels" / spec(name).name
    try:
        info = json.loads((root / "info.json").read_text())
    except (OSError, ValueError):
        return None
    return Kernel(spec(name), root, info["release"], info["image_package"], info["version"])


def ensure(name: str, *, progress: bool | None = None) -> Kernel:
    """The cached kernel NAME, fetching it first if needed.  Concurrent callers (threads or
    processes) wait for one fetch rather than fetching twice."""
    kernel = cached(name)
    if kernel is not None:
        return kernel
    with _lock(cache_dir() / "kernels" / f".{spec(name).name}.lock"):
        return cached(name) or _fetch(name, progress=progress)


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock file (fcntl), held for the duration of the with block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --- apt ------------------------------------------------------------------------------


class _Apt:
    """apt-get/apt-cache with a private configuration under the cache directory."""

    def __init__(self, arch: str, progress: bool):
        self.root = cache_dir() / "apt" / arch
        self.arch = arch
        self.progress = progress
        for d in ("lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        sources = self.root / "sources.list"
        keyring = f"[signed-by={KEYRING} arch={arch}]" if Path(KEYRING).exists() else f"[arch={arch}]"
        sources.write_text("".join(f"deb {keyring} {ARCHIVE} {s} main\n" for s in SUITES))
        self.options = [
            "-o", f"Dir::Etc::sourcelist={sources}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", f"APT::Architecture={arch}",
            "-o", f"APT::Architectures={arch}",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
        ]

    def _run(self, tool: str, *args: str, capture: bool = True, cwd: Path | None = None) -> str:
        with _lock(self.root / ".lock"):  # one apt at a time on these lists
            return self._run_unlocked(tool, *args, capture=capture, cwd=cwd)

    def _run_unlocked(self, tool: str, *args: str, capture: bool, cwd: Path | None) -> str:
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: memscope lab needs Debian's apt tools")
        cmd = [tool, *self.options, *args]
        if not capture and not self.progress:
            cmd.insert(1, "-qq")
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, text=True,
                stdout=subprocess.PIPE if capture or not self.progress else None,
                stderr=subprocess.PIPE if capture or not self.progress else None)
        except OSError as e:
            raise LabError(f"cannot run {tool}: {e.strerror}") from None
        if proc.returncode != 0:
            err = (proc.stderr or "").strip().splitlines()
            last = err[-1] if err else f"exit status {proc.returncode}"
            raise LabError(f"{tool} {args[0]} failed: {last}")
        return proc.stdout or ""

    def update(self) -> None:
        stamp = self.root / "updated"
        try:
            # --error-on=any: without it apt-get update exits 0 when no index could be fetched
            self._run("apt-get", "update", "--error-on=any", capture=not self.progress)
        except LabError as e:
            raise LabError(f"cannot reach the Debian archive ({e}); check the network "
                           "or use kernels already in the cache ('memscope lab kernels')") from None
        stamp.touch()

    def depends(self, package: str, suite: str) -> list[str]:
        out = self._run("apt-cache", "show", f"{package}/{suite}")
        block = out.split("\n\n")[0]
        m = re.search(r"^Depends: (.*)$", block, re.M)
        return [d.split()[0] for d in m.group(1).split(", ")] if m else []

    def version(self, package: str, suite: str) -> str:
        out = self._run("apt-cache", "show", f"{package}/{suite}")
        m = re.search(r"^Version: (\S+)$", out, re.M)
        if not m:
            raise LabError(f"no version of {package} in {suite}")
        return m.group(1)

    def download(self, package: str, suite: str, into: Path) -> Path:
        self._run("apt-get", "download", f"{package}/{suite}", capture=False, cwd=into)
        debs = sorted(into.glob(f"{package.replace('+', '?')}_*.deb"))
        if not debs:
            raise LabError(f"apt-get download {package}/{suite} produced no .deb")
        return debs[0]


def _deb_members(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    return [line.split(None, 5)[5].split(" -> ")[0] for line in out.splitlines() if line]


def _extract(deb: Path, dest: Path, patterns: list[str]) -> None:
    """Extract the members matching PATTERNS (tar wildcards; none: every member) of DEB into
    DEST.  Directory symlinks already in DEST are kept (a merged-/usr tree's /bin -> usr/bin
    stays a link when a package ships ./bin/...)."""
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest), "--keep-directory-symlink",
                          *(["--wildcards", *patterns] if patterns else [])],
                         stdin=dpkg.stdout, stderr=subprocess.PIPE, text=True)
    dpkg.stdout.close()
    if dpkg.wait() != 0 or tar.returncode != 0:
        raise LabError(f"cannot extract {patterns} from {deb.name}: {tar.stderr.strip()}")


def _find(root: Path, pattern: str) -> Path | None:
    hits = sorted(p for p in root.rglob(pattern) if p.is_file() or p.is_symlink())
    return hits[0] if hits else None


def _decompress_module(src: Path, dst: Path) -> None:
    """Write SRC (.ko, .ko.xz or .ko.zst) uncompressed to DST: busybox insmod passes the
    bytes to init_module(), which does not decompress."""
    if src.suffix == ".xz":
        import lzma

        dst.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.suffix == ".zst":
        try:
            subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(dst), str(src)], check=True)
        except (OSError, subprocess.CalledProcessError):
            raise LabError(f"cannot decompress {src.name}: install zstd") from None
    elif src.suffix == ".gz":
        import gzip

        dst.write_bytes(gzip.decompress(src.read_bytes()))
    else:
        shutil.copyfile(src, dst)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"memscope lab: {msg}", file=sys.stderr, flush=True)


def fetch(name: str, *, progress: bool | None = None) -> Kernel:
    """Download NAME's Debian image and debug packages and keep what the lab needs (again,
    if it is cached already: the newest package of the suite replaces it).

    The kernel is assembled in a temporary directory beside its final place and renamed into
    place only when complete, so an interrupted fetch is never used."""
    with _lock(cache_dir() / "kernels" / f".{spec(name).name}.lock"):
        return _fetch(name, progress=progress)


def _fetch(name: str, *, progress: bool | None) -> Kernel:
    ks = spec(name)
    if progress is None:
        progress = sys.stderr.isatty()
    kernels = cache_dir() / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    apt = _Apt(ks.arch, progress)
    _say(progress, f"resolving {ks.meta} in {ks.suite}")
    apt.update()
    image = next((d for d in apt.depends(ks.meta, ks.suite) if d.startswith("linux-image-")), None)
    if image is None:
        raise LabError(f"{ks.meta}/{ks.suite} names no linux-image package")
    release = image.removeprefix("linux-image-")
    version = apt.version(image, ks.suite)
    work = Path(tempfile.mkdtemp(prefix=f".{ks.name}.", dir=kernels))
    try:
        debs = work / "debs"
        tree = work / "tree"
        out = work / "kernel"
        for d in (debs, tree, out / "modules"):
            d.mkdir(parents=True)
        # In sid the image package is split: vmlinuz in linux-binary-*, config in
        # linux-base-*, modules in linux-modules-*.  Older suites have one package.
        packages = [image] + [d for d in apt.depends(image, ks.suite)
                              if d.endswith(release) and d.split("-")[1] in ("binary", "base", "modules")]
        for pkg in packages + [image + "-dbg"]:
            _say(progress, f"downloading {pkg}")
            deb = apt.download(pkg, ks.suite, debs)
            if pkg.endswith("-dbg"):
                _say(progress, f"extracting vmlinux from {deb.name}")
                _extract(deb, tree, [f"./usr/lib/debug/boot/vmlinux-{release}",
                                     f"./usr/lib/debug/lib/modules/{release}/vmlinux"])
            else:
                wanted = ["./boot/*", "./usr/lib/modules/*/vmlinuz",
                          *(f"*/{m}.ko*" for m in GUEST_MODULES)]
                names = _deb_members(deb)
                patterns = [p for p in wanted if any(_match(p, n) for n in names)]
                if patterns:
                    _extract(deb, tree, patterns)
            deb.unlink()
        files = {
            "vmlinuz": _find(tree, f"vmlinuz-{release}") or _find(tree, "vmlinuz"),
            "config": _find(tree, f"config-{release}"),
            "System.map": _find(tree, f"System.map-{release}"),
        }
        vmlinux = tree / f"usr/lib/debug/boot/vmlinux-{release}"
        if not vmlinux.exists():  # sid: a symlink into lib/modules, or only the latter
            vmlinux = tree / f"usr/lib/debug/lib/modules/{release}/vmlinux"
        if not vmlinux.exists():
            raise LabError(f"{image}-dbg has no vmlinux for {release}")
        if files["vmlinuz"] is None:
            raise LabError(f"no vmlinuz found in {', '.join(packages)}")
        shutil.move(str(vmlinux.resolve()), out / "vmlinux")
        for dst, src in files.items():
            # Debian ships a placeholder System.map ("The real System.map is in the
            # linux-image-<version>-dbg package"): keep only a real one.
            if src is not None and not (dst == "System.map" and src.stat().st_size < 4096):
                shutil.move(str(src), out / dst)
        for mod in GUEST_MODULES:
            src = _find(tree, f"{mod}.ko*")
            if src is None:
                raise LabError(f"module {mod} not found in {', '.join(packages)}")
            _decompress_module(src, out / "modules" / f"{mod}.ko")
        _say(progress, f"downloading busybox-static ({ks.arch})")
        bb = apt.download("busybox-static", BUSYBOX_SUITE, debs)
        _extract(bb, tree, ["./bin/busybox"])
        shutil.move(str(tree / "bin/busybox"), out / "busybox")
        (out / "info.json").write_text(json.dumps(
            {"name": ks.name, "release": release, "image_package": image, "version": version,
             "arch": ks.qemu_arch, "suite": ks.suite}, indent=2) + "\n")
        final = kernels / ks.name
        rename_into_place(out, final)
    except OSError as e:
        raise cache_error(e, f"fetching {name}", kernels) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(progress, f"{name}: {release} ready in {final}")
    kernel = cached(name)
    assert kernel is not None
    return kernel


def rename_into_place(src: Path, final: Path) -> None:
    """Make the complete directory SRC the cache entry FINAL (replacing an older one)."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(src, final)


def cache_error(e: OSError, doing: str, where: Path) -> LabError:
    """The one-line error for an OSError while DOING (e.g. "fetching 6.12") into the cache
    directory WHERE: a full disk says what to do about it."""
    if e.errno == 28:  # ENOSPC
        return LabError(f"disk full while {doing} into {where}: free space (about 2 GB) "
                        "or set MEMSCOPE_CACHE to a larger disk")
    return LabError(f"{doing} failed: {e}")


def _match(pattern: str, name: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)
