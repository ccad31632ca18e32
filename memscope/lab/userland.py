"""A small Debian userland for lab guests (``memscope lab run KERNEL --userland``): Python,
numpy, tabulate and drgn from Debian's packages, memscope from this source tree, and the
kernel's vmlinux where Debian's -dbg package puts it (``/usr/lib/debug/boot/vmlinux-RELEASE``),
so that ``memscope -k`` and ``drgn`` run inside the guest on its own kernel with drgn's
default debug-info lookup.

It is made offline on the host, without root's help inside the guest and without running
any package's maintainer scripts: the packages and their dependencies are resolved and
downloaded with the lab's private apt configuration (memscope.lab.kernels), each .deb is
unpacked (``dpkg-deb --fsys-tarfile``) into a merged-/usr tree, and the few things a
maintainer script would have done are done here (numpy's BLAS/LAPACK alternatives, the
dynamic linker's cache, compiled bytecode where the host can run the guest's Python).
The tree becomes an ext4 image (``mke2fs -d``: no loop device, no mount).

Cache layout (``$MEMSCOPE_CACHE``, like the kernels; each built in a temporary directory
beside its final place under a lock, renamed into place when complete, so an interrupted
build is never used)::

    userland/<arch>/root.ext4 info.json     Python, numpy, tabulate, drgn, busybox (per arch)
    userland/debug/<kernel>-<release>/debug.ext4   boot/vmlinux-RELEASE (per kernel)
    userland/modules/<kernel>-<release>-softdeps/  the disks' modules and their order

A run adds what changes from run to run in its initramfs (memscope, the workload, the lab's
guest scripts): userland_guest/init loads the modules the disks need, mounts the root image
on ``/`` and the debug image on ``/usr/lib/debug``, copies that payload in, and hands over
(``switch_root``) to the lab's usual init (guest/init), which runs the workload in the
userland.  QEMU opens both images with ``snapshot=on``: the guest may write (and a test
may delete the vmlinux), the cached images never change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from ..errors import LabError
from . import initramfs, kernels

#: The suite the userland comes from, for every kernel: sid has python3-drgn 0.3.0, whose
#: ``drgn.commands`` API the memscope plugin uses (trixie's 0.0.31 predates it), and a
#: Python new enough for memscope (bullseye's 3.9 is not).
SUITE = "sid"
#: What the guest needs: busybox for the shell and init, the rest for memscope and drgn.
PACKAGES = ("busybox-static", "python3", "python3-numpy", "python3-tabulate", "python3-drgn")
#: What a --kdump-level guest adds (memscope.lab.kdump): kexec (``kexec -p`` loads the
#: capture kernel) and makedumpfile (run by it), from SUITE like the rest.  Not from the
#: kernel's own suite: the userland is sid's, and trixie's kexec-tools cannot be installed
#: beside it (it needs libxenmisc4.20 of a trixie point release whose Xen libraries are
#: older than sid's; apt: "held broken packages").  sid's makedumpfile (1.7.8) knows newer
#: kernels than trixie's (1.7.6) and writes the same format; Debian builds neither with
#: snappy (no libsnappy dependency): zlib, lzo and zstd.
KDUMP_PACKAGES = ("kexec-tools", "makedumpfile")
#: Debian architecture -> multiarch triplet (numpy's BLAS/LAPACK alternatives live there).
TRIPLET = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
#: The marker file that tells the guest's first init which disk is the userland.
MARKER = ".memscope-userland"
SOURCE = Path(__file__).resolve().parents[2]  # the source tree memscope is installed from
PACKAGE = Path(__file__).resolve().parents[1]  # memscope/
#: The userland's own guest scripts (kept out of guest/, whose every byte is part of each
#: lab case's cache key): the first init, the workload wrapper, the /results printer.
GUEST = Path(__file__).parent / "userland_guest"
#: What the guest needs to reach its disks (virtio-blk on PCI, ext4), those not built into
#: its kernel (modules.builtin), with their dependencies.  virtio-blk rather than NVMe,
#: which the x86_64 cloud kernels have built in: the lab gives every guest an empty NVMe
#: disk (/dev/nvme0n1) that workloads format, and NVMe controllers probe asynchronously,
#: so ours could take that name.  virtio_blk is a module on every Debian kernel.
DISK_MODULES = ("virtio_pci", "virtio_blk", "ext4")
#: Part of the modules' cache key: a closure built by an older _fetch_modules is not
#: reused (before soft dependencies were followed, arm64's lacked crc32c_generic).
MODULES_FORMAT = "-softdeps"


@dataclasses.dataclass(frozen=True)
class Userland:
    """What a --userland boot needs besides the kernel: the two disk images (ext4) and
    the modules that reach them (in load order)."""

    root: Path
    debug: Path
    modules: tuple[Path, ...]

    def qemu_args(self) -> list[str]:
        """QEMU options attaching both images on virtio-blk (the guest's /dev/vd*),
        copy-on-write (``snapshot=on``: writes go to a temporary overlay, the cached
        images are never changed)."""
        args = []
        for i, img in enumerate((self.root, self.debug)):
            args += ["-drive", f"file={img},if=none,id=ms{i},format=raw,snapshot=on",
                     "-device", f"virtio-blk-pci,drive=ms{i}"]
        return args


def _say(progress: bool, msg: str) -> None:
    kernels._say(progress, msg)


def ensure(kernel: kernels.Kernel, *, progress: bool = False, kdump: bool = False) -> Userland:
    """The userland for KERNEL, building (and caching) what is missing: the root image for
    its architecture, the debug image with its vmlinux, and the modules its disks need.
    With KDUMP, a root image that also has KDUMP_PACKAGES (cached apart, as
    ``userland/<arch>-kdump/``).

    :raises LabError: the archive cannot be reached, a package or tool is missing, or the
        disk is full (one line each)."""
    arch = kernel.spec.arch
    if arch not in TRIPLET:
        raise LabError(f"--userland knows no Debian userland for {arch}", exit_status=2)
    if kdump:
        root = _cached_build(cache_root() / f"{arch}-kdump", "root.ext4",
                             lambda work: _build_root(arch, work, progress, KDUMP_PACKAGES))
    else:
        root = _cached_build(cache_root() / arch, "root.ext4",
                             lambda work: _build_root(arch, work, progress))
    debug = _cached_build(cache_root() / "debug" / f"{kernel.name}-{kernel.release}",
                          "debug.ext4", lambda work: _build_debug(kernel, work))
    mods = _cached_build(cache_root() / "modules" / f"{kernel.name}-{kernel.release}"
                         f"{MODULES_FORMAT}",
                         "order", lambda work: _fetch_modules(kernel, work, progress))
    return Userland(root, debug, tuple(mods.parent / n for n in mods.read_text().split()))


def cache_root() -> Path:
    """Where userland images are cached: ``$MEMSCOPE_CACHE/userland``."""
    return kernels.cache_dir() / "userland"


def _cached_build(final: Path, name: str, build) -> Path:
    """FINAL/NAME, built by BUILD(work) into a temporary directory beside FINAL (under a
    lock, so concurrent runs build it once) and renamed into place when complete."""
    if (final / name).exists():
        return final / name
    final.parent.mkdir(parents=True, exist_ok=True)
    with kernels._lock(final.parent / f".{final.name}.lock"):
        if (final / name).exists():
            return final / name
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        work.chmod(0o755)
        try:
            build(work)
            kernels.rename_into_place(work, final)
        except OSError as e:
            raise kernels.cache_error(e, f"building {final.name}", final.parent) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final / name


def _run(cmd: list[str], what: str, **kw) -> str:
    if shutil.which(cmd[0]) is None:
        raise LabError(f"{cmd[0]} not found: it is needed to {what} (make setup installs it)")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        raise LabError(f"cannot {what}: {lines[-1] if lines else f'exit status {p.returncode}'}")
    return p.stdout


def _download_closure(apt: kernels._Apt, packages: tuple[str, ...], into: Path) -> list[Path]:
    """PACKAGES and every package they depend on (no recommends), from SUITE, as .debs in
    INTO.  apt resolves against an empty dpkg status (the private configuration), so the
    whole closure is downloaded."""
    (into / "partial").mkdir(parents=True, exist_ok=True)
    apt._run("apt-get", "install", "--download-only", "-y", "--no-install-recommends",
             "-o", f"Dir::Cache::archives={into}", "-o", f"APT::Default-Release={SUITE}",
             *packages)
    debs = sorted(into.glob("*.deb"))
    if not debs:
        raise LabError(f"apt-get downloaded nothing for {' '.join(packages)}")
    return debs


def _build_root(arch: str, work: Path, progress: bool, extra: tuple[str, ...] = ()) -> None:
    """The root image: PACKAGES and EXTRA of SUITE unpacked."""
    apt = kernels._Apt(arch, progress)
    _say(progress, f"userland ({arch}): resolving {' '.join(PACKAGES + extra)} in {SUITE}")
    apt.update()
    debs = _download_closure(apt, PACKAGES + extra, work / "debs")
    tree = work / "tree"
    for d in ("usr/bin", "usr/sbin", "usr/lib", "etc", "proc", "sys", "dev", "tmp", "run",
              "root", "results", "usr/lib/debug", "usr/lib/python3/dist-packages"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    for alias in ("bin", "sbin", "lib") + (("lib64",) if arch == "amd64" else ()):
        (tree / alias).symlink_to(f"usr/{alias}")
        (tree / "usr" / alias).mkdir(exist_ok=True)
    versions = {}
    _say(progress, f"userland ({arch}): unpacking {len(debs)} packages")
    for deb in debs:
        kernels._extract(deb, tree, [])
        name, version = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"],
                             f"read {deb.name}").split("\n")[:2]
        versions[name.split(": ", 1)[1]] = version.split(": ", 1)[1]
    _maintainer_work(tree, arch)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (tree / MARKER).write_text(json.dumps({"suite": SUITE, "packages": versions}, indent=1))
    (tree / "tmp").chmod(0o1777)
    shutil.rmtree(work / "debs")
    _say(progress, f"userland ({arch}): writing the ext4 image")
    _mkfs(tree, work / "root.ext4", "memscope-root")
    shutil.rmtree(tree)
    (work / "info.json").write_text(json.dumps(
        {"arch": arch, "suite": SUITE, "packages": versions}, indent=2) + "\n")


def _maintainer_work(tree: Path, arch: str) -> None:
    """What the unpacked packages' maintainer scripts would have done that the guest needs:
    numpy's libblas.so.3/liblapack.so.3 (update-alternatives links), and on a host that can
    run the guest's binaries (same architecture) the linker cache and Python's bytecode
    (otherwise each guest compiles what it imports, which TCG makes slow)."""
    libdir = tree / "usr/lib" / TRIPLET[arch]
    for lib, sub in (("libblas.so.3", "blas"), ("liblapack.so.3", "lapack")):
        target = libdir / sub / lib
        if target.exists() and not (libdir / lib).exists():
            (libdir / lib).symlink_to(f"{sub}/{lib}")
    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    if host == arch and os.geteuid() == 0:
        if (tree / "usr/sbin/ldconfig").exists():  # libc-bin is Essential, not a dependency
            _run(["chroot", str(tree), "/sbin/ldconfig"], "build the guest's linker cache")
        pys = sorted(p.name for p in (tree / "usr/lib").glob("python3.*") if p.is_dir())
        _run(["chroot", str(tree), "/usr/bin/python3", "-m", "compileall", "-q", "-j", "1",
              "/usr/lib/python3/dist-packages", *(f"/usr/lib/{p}" for p in pys)],
             "compile the guest's Python modules")


def _mkfs(tree: Path, image: Path, label: str) -> None:
    """An ext4 image of TREE (sparse; its size is the tree's plus a quarter and 64 MiB).
    No journal and no metadata checksums: the guest's ext4 then needs no crc32c module,
    and it is a throw-away copy-on-write disk anyway."""
    used = int(_run(["du", "-s", "-k", "--apparent-size", str(tree)], "size the tree")
               .split()[0])
    size_k = used * 5 // 4 + 65536
    _run(["mke2fs", "-q", "-t", "ext4", "-O", "^has_journal,^metadata_csum", "-L", label,
          "-E", "root_owner=0:0", "-d", str(tree), str(image), f"{size_k}k"],
         f"make the ext4 image {image.name} (e2fsprogs)")


def _build_debug(kernel: kernels.Kernel, work: Path) -> None:
    """debug.ext4: boot/vmlinux-RELEASE, mounted on /usr/lib/debug in the guest."""
    tree = work / "tree"
    (tree / "boot").mkdir(parents=True)
    dst = tree / "boot" / f"vmlinux-{kernel.release}"
    try:
        os.link(kernel.vmlinux, dst)  # same file system: no copy of 300-400 MB
    except OSError:
        shutil.copyfile(kernel.vmlinux, dst)
    _mkfs(tree, work / "debug.ext4", "memscope-debug")
    shutil.rmtree(tree)


def _fetch_modules(kernel: kernels.Kernel, work: Path, progress: bool) -> None:
    """The modules of DISK_MODULES not built into KERNEL (its modules.builtin) and those
    they need, uncompressed, and ``order``: their file names in load order (what each needs
    first).  Debian ships no modules.dep or modules.softdep (depmod makes them at install),
    so each module's ``.modinfo`` says what it needs: ``depends=`` (modules whose symbols it
    uses) and ``softdep=pre:`` (modules modprobe loads before it, by module name or alias:
    ext4 and jbd2 name ``crypto-crc32c``, without which ext4 refuses to mount: "Cannot load
    crc32c driver", arm64 6.12, where it is crc32c_generic.ko).  A soft dependency built
    into the kernel (modules.builtin, modules.builtin.modinfo) or found nowhere is skipped,
    as modprobe skips it."""
    from ..target.elf import section_data

    apt = kernels._Apt(kernel.spec.arch, progress)
    debs = work / "debs"
    tree = work / "tree"
    debs.mkdir()
    tree.mkdir()
    # The image package holds them, or in sid's split layout two of its dependencies do:
    # the modules in linux-modules-*, modules.builtin in linux-base-* (7.2).  Each package
    # gives what it has (tar fails on a pattern that matches nothing).
    pkgs = [kernel.image_package] + [
        d for d in apt.depends(kernel.image_package, kernel.spec.suite)
        if d.startswith(("linux-modules-", "linux-base-")) and d.endswith(kernel.release)]
    _say(progress, f"{kernel.name}: fetching the modules its disks need")
    for pkg in pkgs:
        deb = apt.download(pkg, kernel.spec.suite, debs)
        names = kernels._deb_members(deb)
        patterns = [p for p in ("*.ko*", "*/modules.builtin", "*/modules.builtin.modinfo")
                    if any(kernels._match(p, n) for n in names)]
        if patterns:
            kernels._extract(deb, tree, patterns)
        deb.unlink()
    found = {_mod_name(p.name): p for p in tree.rglob("*.ko*")}
    lists = list(tree.rglob("modules.builtin"))
    if not lists:  # without it every built-in module would look missing
        raise LabError(f"{kernel.release}: no modules.builtin in {', '.join(pkgs)}")
    builtin = {_mod_name(line) for f in lists for line in f.read_text().split()}
    # modules.builtin.modinfo: "MODULE.alias=NAME" fields of the built-in modules
    builtin_aliases = {field.split(b".alias=", 1)[1].decode()
                       for f in tree.rglob("modules.builtin.modinfo")
                       for field in f.read_bytes().split(b"\0") if b".alias=" in field}
    infos: dict[str, list[bytes]] = {}
    order: list[str] = []

    def modinfo(name: str) -> list[bytes]:
        if name not in infos:
            out = work / f"{name}.ko"
            kernels._decompress_module(found[name], out)
            with open(out, "rb") as f:
                infos[name] = (section_data(f, ".modinfo") or b"").split(b"\0")
            if name not in order:  # read only for its aliases: not kept
                out.unlink()
        return infos[name]

    def by_alias(alias: str) -> str | None:
        """The module of FOUND that has ALIAS (those whose name shares its stem read
        first: each read decompresses a module)."""
        stem = alias.removeprefix("crypto-").replace("-", "_")
        for name in sorted(found, key=lambda n: stem not in n):
            if f"alias={alias}".encode() in modinfo(name):
                return name
        return None

    def soft(dep: str) -> str | None:
        """The module to load for soft dependency DEP, or None (built in, or nowhere)."""
        if dep.replace("-", "_") in builtin or dep in builtin_aliases:
            return None
        if dep.replace("-", "_") in found:
            return dep.replace("-", "_")
        return by_alias(dep)

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in found or name in path:
            raise LabError(f"{kernel.release}: module {name} not found in {', '.join(pkgs)}"
                           if name not in found else f"{kernel.release}: modules depend "
                           f"on each other in a cycle: {' -> '.join(path + (name,))}")
        out = work / f"{name}.ko"
        kernels._decompress_module(found[name], out)
        with open(out, "rb") as f:
            info = (section_data(f, ".modinfo") or b"").split(b"\0")
        infos[name] = info
        for field in info:
            if field.startswith(b"softdep="):
                words = field[8:].decode().split()
                pre = words[words.index("pre:") + 1:] if "pre:" in words else []
                for dep in pre:
                    if dep == "post:":
                        break
                    mod = soft(dep)
                    if mod is not None:
                        visit(mod, path + (name,))
        for field in info:
            if field.startswith(b"depends="):
                for dep in filter(None, field[8:].decode().split(",")):
                    visit(dep.replace("-", "_"), path + (name,))
        order.append(name)

    for name in DISK_MODULES:
        if name not in builtin:
            visit(name, ())
    for f in work.glob("*.ko"):  # only ORDER's modules stay
        if f.stem not in order:
            f.unlink()
    (work / "order").write_text("".join(f"{n}.ko\n" for n in order))
    shutil.rmtree(tree)
    shutil.rmtree(debs)


def _mod_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.split(".ko", 1)[0].replace("-", "_")


# --- the run's initramfs -----------------------------------------------------------------


def _memscope_files() -> dict[str, bytes]:
    """memscope as installed in the guest: the package's Python files and package data
    under /usr/lib/python3/dist-packages, a dist-info with the entry points of pyproject.toml
    (drgn finds the memscope plugin through them), and /usr/bin/memscope."""
    site = "usr/lib/python3/dist-packages"
    files: dict[str, bytes] = {}
    for p in sorted(PACKAGE.rglob("*")):
        rel = p.relative_to(PACKAGE)
        if "__pycache__" in rel.parts or not p.is_file():
            continue
        if p.suffix == ".py" or rel.parts[:2] == ("lab", "guest"):
            files[f"{site}/memscope/{rel}"] = p.read_bytes()
    meta = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]
    info = f"{site}/memscope-{meta['version']}.dist-info"
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {meta['name']}\n"
                                 f"Version: {meta['version']}\n").encode()
    groups = {"console_scripts": meta.get("scripts", {}), **meta.get("entry-points", {})}
    files[f"{info}/entry_points.txt"] = "".join(
        f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for g, eps in groups.items()).encode()
    files[f"{info}/top_level.txt"] = b"memscope\n"
    files[f"{info}/INSTALLER"] = b"memscope-lab\n"
    for name, target in meta.get("scripts", {}).items():
        mod, func = target.split(":")
        files[f"usr/bin/{name}"] = (f"#!/usr/bin/python3\nimport sys\nfrom {mod} import {func}\n"
                                    f"sys.exit({func}())\n").encode()
    return files


def build_initrd(path: Path, kernel: kernels.Kernel, userland: Userland, *, workload: bytes,
                 conf: dict[str, str], library: list[Path],
                 programs: dict[str, bytes] | None = None,
                 extra: dict[str, tuple[bytes, int]] | None = None) -> None:
    """The initramfs of a --userland boot, written gzip'd to PATH: busybox, the modules
    (VMCOREINFO's qemu_fw_cfg, then the disks' in load order, listed in
    /lib/modules/order), /init (userland_guest/init) and /payload: what the init copies
    into the userland before it hands over to the lab's init (guest/init, as
    /memscope-init) — memscope, the workload (/workload-run.sh, run by
    userland_guest/workload, which then prints /results for the host), the built-in
    workloads, the lab's guest helpers and PROGRAMS (name: executable, in /usr/bin: the
    lab's compiled guest programs, which the built-in workloads call), the run's
    configuration and EXTRA (path in the userland: (bytes, mode); the kdump path's
    capture kernel and scripts, memscope.lab.kdump.payload)."""
    a = initramfs._Newc()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "newroot", "probe"):
        a.add(d, stat.S_IFDIR | 0o755)
    a.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    a.add("bin/busybox", stat.S_IFREG | 0o755, kernel.busybox.read_bytes())
    a.add("init", stat.S_IFREG | 0o755, (GUEST / "init").read_bytes())
    mods = [*kernel.modules, *userland.modules]
    for m in mods:
        a.add(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes())
    a.add("lib/modules/order", stat.S_IFREG | 0o644, "".join(f"{m.name}\n" for m in mods).encode())
    payload = {
        "memscope-init": ((initramfs.GUEST / "init").read_bytes(), 0o755),
        "workload.sh": ((GUEST / "workload").read_bytes(), 0o755),
        "workload-run.sh": (workload, 0o755),
        "etc/memscope.conf": ("".join(f"{k}='{v}'\n" for k, v in conf.items()).encode(), 0o644),
        **{f"usr/bin/{h}": ((initramfs.GUEST / h).read_bytes(), 0o755)
           for h in ("snapshot", "track")},
        "usr/bin/results": ((GUEST / "results").read_bytes(), 0o755),
        **{f"usr/bin/{name}": (exe, 0o755) for name, exe in (programs or {}).items()},
        **{f"workloads/{w.name}": (w.read_bytes(), 0o755) for w in library},
        **{name: (data, 0o755 if name.startswith("usr/bin/") else 0o644)
           for name, data in _memscope_files().items()},
        **(extra or {}),
    }
    # Directories before what they hold (the kernel's unpacker makes no parents).
    a.add("payload", stat.S_IFDIR | 0o755)
    parents = {str(p) for n in payload for p in Path(n).parents} - {"."}
    for d in sorted(parents):
        a.add(f"payload/{d}", stat.S_IFDIR | 0o755)
    for name, (data, mode) in payload.items():
        a.add(f"payload/{name}", stat.S_IFREG | mode, data)
    initramfs.write(path, a)


def describe(kernel: kernels.Kernel, kdump: bool = False) -> dict:
    """What meta.json records of a --userland boot: the packages and their versions."""
    info = cache_root() / (kernel.spec.arch + ("-kdump" if kdump else "")) / "info.json"
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":  # python -m memscope.lab.userland KERNEL: build and print paths
    u = ensure(kernels.ensure(sys.argv[1], progress=True), progress=True)
    print(u)
