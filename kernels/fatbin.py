"""Which CUDA device code a host library carries (SASS per ``sm_XY``, PTX per ``compute_XY``), without cuobjdump.

nvcc embeds the device code of a host object in its ELF section ``.nv_fatbin`` (``__nv_relfatbin`` for relocatable
device code, ``-rdc``, before the device link): one fatbin container per translation unit (plus one per device link).
A container is a 16-byte header (magic ``0xBA55ED50``, version, header size, size of what follows) and entries, each
a 64-byte-or-larger header and a payload. Entry header fields read here (little endian)::

    0 u16 kind (1 = PTX, 2 = ELF/cubin)   4 u32 header size      8 u64 payload size
    24 u16 minor, 26 u16 major (PTX: ISA version, e.g. 9.0)        28 u32 arch (87 = sm_87 / compute_87)
    40 u64 flags: 0x2000 / 0x8000 compressed (LZ4 / the CUDA 13 default), 0x100000 arch-specific (``sm_90a``),
                  0x200000 family-specific (``sm_100f``)

Only metadata is read, never the payload, so compressed entries (``-Xfatbin=-compress-all``, ``--compress-mode``)
need no decompression. Verified against ``cuobjdump --list-elf --list-ptx`` 13.2 on nvcc 13.0 output
(tests/kernels/test_fatbin.py).

Which GPU gets a kernel image (:meth:`DeviceCode.runs_on`), per NVIDIA's compatibility rules (CUDA C++ Programming
Guide, "Binary Compatibility" and "PTX Compatibility"; the per-architecture compatibility guides, e.g.
https://docs.nvidia.com/cuda/ada-compatibility-guide: "a cubin generated for compute capability 8.6 is supported to
run on a GPU with compute capability 8.9; however, a cubin generated for compute capability 8.9 is not supported to
run on a GPU with compute capability 8.6"):

* a cubin for ``sm_XY`` runs on compute capability X.Z with Z ≥ Y (same major only). This holds for desktop/server
  GPUs only: the Programming Guide notes that binary compatibility is not supported for Tegra, nor between desktop
  and Tegra, so a Jetson (Orin = 8.7, Xavier = 7.2) needs SASS for exactly its own architecture (``sm_80`` SASS does
  *not* serve Orin) or PTX;
* an arch-specific cubin (``sm_90a``) runs only on exactly that compute capability; a family-specific one
  (``sm_100f``) on later minors of the same major, like a plain one;
* PTX for ``compute_XY`` is JIT-compiled by the driver for any device of compute capability ≥ X.Y (``compute_90a``:
  exactly 9.0; ``compute_100f``: the same major), provided the driver understands the PTX ISA version.

Standard library only.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

__all__ = ["DeviceCode", "FatbinEntry", "FatbinError", "device_code", "parse_cc"]

FATBIN_MAGIC = 0xBA55ED50
SECTIONS = (".nv_fatbin", "__nv_relfatbin")
KIND_PTX, KIND_ELF = 1, 2
FLAG_COMPRESSED = 0x2000 | 0x8000
FLAG_ARCH_SPECIFIC = 0x100000
FLAG_FAMILY_SPECIFIC = 0x200000
EM_CUDA = 190
# Tegra (integrated) GPUs: no SASS binary compatibility with other minors or with desktop GPUs.
TEGRA_CCS = frozenset({(3, 2), (5, 3), (6, 2), (7, 2), (8, 7), (10, 1), (11, 0)})
OLDEST_NVCC13_CC = (7, 5)  # CUDA 13 dropped Maxwell, Pascal and Volta (sm_50 … sm_72)

_CONTAINER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQIIHHIIIQ")  # the first 48 bytes of an entry header


class FatbinError(UserError, ValueError):
    """The file cannot be read as a host binary with CUDA device code; the message is one line."""


@dataclass(frozen=True)
class FatbinEntry:
    """One image in a fatbin: SASS (a cubin) or PTX for one architecture."""

    kind: str  # "sass" or "ptx"
    arch: int  # 87 for sm_87 / compute_87
    suffix: str  # "", "a" (arch-specific) or "f" (family-specific)
    version: tuple[int, int]  # PTX: the PTX ISA version; SASS: the cubin format version
    compressed: bool
    section: str

    @property
    def cc(self) -> tuple[int, int]:
        return divmod(self.arch, 10)

    @property
    def name(self) -> str:
        return f"{'sm' if self.kind == 'sass' else 'compute'}_{self.arch}{self.suffix}"


def parse_cc(cc: str | tuple[int, int]) -> tuple[int, int]:
    """``"8.7"``, ``"87"``, ``"sm_87"``, ``"compute_87"`` or ``(8, 7)`` → ``(8, 7)``."""
    if isinstance(cc, tuple):
        return int(cc[0]), int(cc[1])
    s = str(cc).strip().lower().removeprefix("sm_").removeprefix("compute_").rstrip("af")
    try:
        if "." in s:
            major, minor = s.split(".", 1)
            return int(major), int(minor)
        return divmod(int(s), 10)
    except ValueError:
        raise ValueError(f"not a compute capability: {cc!r} (expected e.g. '8.7' or 'sm_87')") from None


def _cc_str(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


@dataclass(frozen=True)
class DeviceCode:
    """The device code of one file: sorted, de-duplicated SASS and PTX architectures, and every entry."""

    path: str
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    ptx_isa: tuple[str, ...]  # PTX ISA versions of the PTX entries ("9.0": needs a CUDA ≥ 13.0 driver to JIT)
    compressed: bool
    sections: tuple[str, ...]
    entries: tuple[FatbinEntry, ...]

    def summary(self) -> str:
        """``"sm_75, sm_80 + PTX compute_90"``."""
        parts = [", ".join(self.sass) or "no SASS"]
        if self.ptx:
            parts.append("PTX " + ", ".join(self.ptx))
        return " + ".join(parts)

    def runs_on(self, cc: str | tuple[int, int]) -> tuple[bool, str]:
        """Whether a GPU of compute capability ``cc`` gets a kernel image, and a one-line reason."""
        dev = parse_cc(cc)
        sass = [e for e in self.entries if e.kind == "sass"]
        exact = [e for e in sass if e.cc == dev]
        if exact:
            return True, f"SASS {exact[0].name} matches {_cc_str(dev)}"
        if dev not in TEGRA_CCS:
            compatible = [e for e in sass if e.cc[0] == dev[0] and e.cc[1] < dev[1] and e.suffix != "a"
                          and e.cc not in TEGRA_CCS]
            if compatible:
                best = max(compatible, key=lambda e: e.cc)
                return True, f"SASS {best.name} runs on {_cc_str(dev)} (binary compatible within a major version)"
        jit = [e for e in self.entries if e.kind == "ptx" and (
            e.cc == dev if e.suffix == "a" else e.cc <= dev and (e.suffix != "f" or e.cc[0] == dev[0]))]
        if jit:
            best = max(jit, key=lambda e: e.cc)
            isa = ".".join(map(str, best.version))
            return True, (f"PTX {best.name} is JIT-compiled for {_cc_str(dev)} by the driver on first use (needs a "
                          f"driver that supports PTX ISA {isa}; the first load is slow, see CUDA_CACHE_MAXSIZE)")
        why = ("Tegra GPUs need SASS for exactly their architecture" if dev in TEGRA_CCS and any(
            e.cc[0] == dev[0] and e.cc[1] < dev[1] for e in sass) else "")
        fix = (f"rebuild with {dev[0]}{dev[1]} in POLYPSEG_CUDA_ARCHITECTURES" if dev >= OLDEST_NVCC13_CC else
               f"CUDA 13 cannot target {_cc_str(dev)}: build with a CUDA 12.x toolkit and {dev[0]}{dev[1]} in "
               "POLYPSEG_CUDA_ARCHITECTURES")
        return False, (f"no kernel image for {_cc_str(dev)}: the library carries {self.summary()}"
                       f"{' (' + why + ')' if why else ''}; {fix}")


def _read_at(f, offset: int, size: int, what: str, path: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise FatbinError(f"{path}: truncated ELF file ({what} at offset {offset} runs past the end)")
    return data


def _elf_sections(f, path: str) -> dict[str, tuple[int, int]]:
    """Section name → (file offset, size) of a 64-bit little-endian ELF file."""
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF":
        raise FatbinError(f"{path} is not an ELF file (expected a host shared library, executable or object file)")
    if ident[4] != 2 or ident[5] != 1:
        raise FatbinError(f"{path} is a 32-bit or big-endian ELF file: only 64-bit little-endian binaries are read")
    machine = struct.unpack_from("<H", ident, 0x12)[0]
    if machine == EM_CUDA:
        raise FatbinError(f"{path} is a CUDA device ELF (a cubin), not a host binary carrying a fatbin")
    shoff = struct.unpack_from("<Q", ident, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
    if shoff == 0 or shnum == 0 or shentsize < 64 or shstrndx >= shnum:
        raise FatbinError(f"{path} has no ELF section headers (stripped with --strip-sections?): cannot find "
                          "its device code")
    table = _read_at(f, shoff, shnum * shentsize, "the section header table", path)
    headers = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
    _, _, _, _, str_off, str_size = headers[shstrndx]
    names = _read_at(f, str_off, str_size, "the section name table", path)
    out = {}
    for name_off, sh_type, _, _, off, size in headers:
        if sh_type == 8:  # SHT_NOBITS: no file data
            continue
        end = names.find(b"\0", name_off)
        out[names[name_off:end if end >= 0 else None].decode(errors="replace")] = (off, size)
    return out


def _parse_containers(data: bytes, section: str, path: str) -> list[FatbinEntry]:
    """Every entry of the fatbin containers laid end to end (with zero padding) in ``data``."""
    magic = struct.pack("<I", FATBIN_MAGIC)
    entries: list[FatbinEntry] = []
    pos = data.find(magic)
    while pos >= 0:
        if pos + _CONTAINER.size > len(data):
            raise FatbinError(f"{path}: truncated fatbin header in {section} at offset {pos}")
        _, _, header_size, size = _CONTAINER.unpack_from(data, pos)
        end = pos + header_size + size
        if header_size < _CONTAINER.size or end > len(data):
            raise FatbinError(f"{path}: corrupt fatbin container in {section} at offset {pos} (header "
                              f"{header_size} B, {size} B of entries, section {len(data)} B)")
        e = pos + header_size
        while e < end:
            if e + _ENTRY.size > end:
                raise FatbinError(f"{path}: truncated fatbin entry in {section} at offset {e}")
            kind, _, ehs, psize, _, _, minor, major, arch, _, _, flags = _ENTRY.unpack_from(data, e)
            if ehs < _ENTRY.size or e + ehs + psize > end:
                raise FatbinError(f"{path}: corrupt fatbin entry in {section} at offset {e} (header {ehs} B, "
                                  f"payload {psize} B)")
            if kind in (KIND_PTX, KIND_ELF):
                suffix = "a" if flags & FLAG_ARCH_SPECIFIC else "f" if flags & FLAG_FAMILY_SPECIFIC else ""
                entries.append(FatbinEntry("ptx" if kind == KIND_PTX else "sass", arch, suffix, (major, minor),
                                           bool(flags & FLAG_COMPRESSED), section))
            e += ehs + psize
        pos = data.find(magic, end)
    return entries


def _sort_key(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name.split("_", 1)[1] if c.isdigit())
    return int(digits), name


def device_code(path: str | os.PathLike[str]) -> DeviceCode:
    """Read the device code of a host ELF file (or of a raw ``.fatbin`` file); :class:`FatbinError` (one line)
    if the file is missing, not an ELF file, or carries no device code."""
    p = Path(path)
    if not p.exists():
        raise FatbinError(f"{p}: no such file")
    if not p.is_file():
        raise FatbinError(f"{p} is not a regular file")
    try:
        with open(p, "rb") as f:
            if f.read(4) == struct.pack("<I", FATBIN_MAGIC):
                f.seek(0)
                blobs = {"<fatbin file>": f.read()}
            else:
                f.seek(0)
                table = _elf_sections(f, str(p))
                blobs = {name: _read_at(f, *table[name], name, str(p)) for name in SECTIONS if name in table}
    except OSError as e:
        raise FatbinError(f"{p}: cannot read: {e.strerror or e}") from None
    if not blobs:
        raise FatbinError(f"{p} carries no CUDA device code (no {' or '.join(SECTIONS)} section): it was not "
                          "compiled by nvcc with device code")
    entries = [e for name, data in blobs.items() for e in _parse_containers(data, name, str(p))]
    if not entries:
        raise FatbinError(f"{p} carries no CUDA device code (its {', '.join(blobs)} section holds no SASS or PTX)")
    sass = sorted({e.name for e in entries if e.kind == "sass"}, key=_sort_key)
    ptx = sorted({e.name for e in entries if e.kind == "ptx"}, key=_sort_key)
    isa = sorted({f"{e.version[0]}.{e.version[1]}" for e in entries if e.kind == "ptx"})
    return DeviceCode(str(p), tuple(sass), tuple(ptx), tuple(isa), any(e.compressed for e in entries),
                      tuple(blobs), tuple(entries))
