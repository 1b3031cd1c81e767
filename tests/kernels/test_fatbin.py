"""kernels/fatbin.py: the device code of host libraries, read from their ELF ``.nv_fatbin`` without cuobjdump.

* both built libraries carry exactly the SASS/PTX that ``POLYPSEG_CUDA_ARCHITECTURES`` in kernels/CMakeLists.txt
  asks for (parsed from the file, so changing the list changes the expectation);
* small libraries built here by nvcc with known ``-gencode`` sets (arch-specific ``sm_90a``, family ``sm_100f``,
  PTX-only architectures, compressed fatbins, ``-rdc`` objects) read back exactly; when cuobjdump is available
  (``$CUOBJDUMP`` or on the PATH; the PyPI wheel ``nvidia-cuda-cuobjdump``), the reader agrees with
  ``cuobjdump --list-elf --list-ptx``;
* :meth:`DeviceCode.runs_on` for Orin (8.7), Ampere (8.6), Turing (7.5), Xavier (7.2, refused) and Blackwell
  (10.0 / 12.0 through PTX JIT), and NVIDIA's binary-compatibility rules on synthetic entry lists;
* one-line errors for a missing file, a text file, ELF files without device code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kernels.fatbin import DeviceCode, FatbinEntry, FatbinError, device_code, parse_cc
from kernels.plugin_library import find_plugin_library
from runtime.gpu import find_cuda_hotpath

ROOT = Path(__file__).resolve().parents[2]
KERNEL = """
__global__ void twice(float* x) { x[threadIdx.x] *= 2.f; }
extern "C" void launch(float* x) { twice<<<1, 32>>>(x); }
"""


def cmake_architectures() -> tuple[set[str], set[str]]:
    """SASS and PTX names the CMake list ``POLYPSEG_CUDA_ARCHITECTURES`` produces (CMake semantics: ``N-real`` →
    SASS, ``N-virtual`` → PTX, a bare ``N`` → both)."""
    text = (ROOT / "kernels" / "CMakeLists.txt").read_text()
    m = re.search(r'set\(POLYPSEG_CUDA_ARCHITECTURES\s+"([^"]+)"', text)
    assert m, "POLYPSEG_CUDA_ARCHITECTURES not found in kernels/CMakeLists.txt"
    sass, ptx = set(), set()
    for item in m.group(1).split(";"):
        arch, _, kind = item.strip().partition("-")
        if kind in ("", "real"):
            sass.add(f"sm_{arch}")
        if kind in ("", "virtual"):
            ptx.add(f"compute_{arch}")
    return sass, ptx


def _cuobjdump() -> str | None:
    """$CUOBJDUMP, the PyPI wheel in this environment (a dev dependency: nvidia/cu*/bin), or the PATH."""
    env = os.environ.get("CUOBJDUMP")
    if env and Path(env).is_file():
        return env
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(root).glob("cu*/bin/cuobjdump"))
        if found:
            return str(found[-1])
    return shutil.which("cuobjdump")


def cuobjdump_lists(path: Path) -> tuple[set[str], set[str]] | None:
    """(SASS, PTX) names as cuobjdump lists them (``x.1.sm_86.ptx`` is PTX for compute_86), or None."""
    exe = _cuobjdump()
    if exe is None:
        return None
    out = subprocess.run([exe, "--list-elf", "--list-ptx", str(path)], capture_output=True, text=True,
                         check=True).stdout
    sass = {f"sm_{a}" for a in re.findall(r"ELF file\s+\d+: \S+\.sm_(\w+)\.cubin", out)}
    ptx = {f"compute_{a}" for a in re.findall(r"PTX file\s+\d+: \S+\.sm_(\w+)\.ptx", out)}
    return sass, ptx


def _ours_as_cuobjdump_names(code: DeviceCode) -> tuple[set[str], set[str]]:
    # cuobjdump names a family-specific cubin by its base architecture (sm_100f → "sm_100"), its PTX with the suffix
    return {s.removesuffix("f") for s in code.sass}, set(code.ptx)


# --------------------------------------------------------------------------------------------- the built libraries
@pytest.mark.parametrize("which", ["plugins", "hotpath"])
def test_built_library_carries_the_cmake_architectures(which):
    lib = find_plugin_library() if which == "plugins" else find_cuda_hotpath()
    if lib is None:
        pytest.skip(f"the {which} library is not built")
    code = device_code(lib)
    sass, ptx = cmake_architectures()
    assert set(code.sass) == sass and set(code.ptx) == ptx, code.summary()
    assert code.sections == (".nv_fatbin",)
    assert list(code.sass) == sorted(code.sass, key=lambda s: int(s[3:]))
    listed = cuobjdump_lists(lib)
    if listed is not None:
        assert listed == _ours_as_cuobjdump_names(code)


# --------------------------------------------------------------------------------------------- nvcc-built samples
NVCC_CASES = {
    "sass75+ptx86": (["-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_86,code=compute_86"],
                     ("sm_75",), ("compute_86",)),
    "orin+arch-specific+family": (["-gencode", "arch=compute_87,code=sm_87", "-gencode", "arch=compute_90a,code=sm_90a",
                                   "-gencode", "arch=compute_100f,code=[sm_100f,compute_100f]"],
                                  ("sm_87", "sm_90a", "sm_100f"), ("compute_100f",)),
    "compressed": (["-Xfatbin=-compress-all", "-gencode", "arch=compute_80,code=[sm_80,compute_80]"],
                   ("sm_80",), ("compute_80",)),
}


def _nvcc_build(tmp: Path, name: str, flags: list[str], shared: bool = True) -> Path:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on the PATH")
    src = tmp / "twice.cu"
    src.write_text(KERNEL)
    out = tmp / (f"lib{name}.so" if shared else f"{name}.o")
    cmd = [nvcc, *flags, str(src), "-o", str(out)]
    cmd[1:1] = ["-shared", "-Xcompiler", "-fPIC", "-cudart", "static"] if shared else ["-c"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this nvcc cannot build {name}: {r.stderr.strip().splitlines()[-1:]}")
    return out


@pytest.mark.parametrize("case", list(NVCC_CASES))
def test_nvcc_built_library_reads_back(tmp_path, case):
    flags, sass, ptx = NVCC_CASES[case]
    code = device_code(_nvcc_build(tmp_path, case.replace("+", "_"), flags))
    assert (code.sass, code.ptx) == (sass, ptx)
    assert code.ptx_isa and all(re.fullmatch(r"\d+\.\d+", v) for v in code.ptx_isa)
    if case == "compressed":
        assert all(e.compressed for e in code.entries)
    listed = cuobjdump_lists(Path(code.path))
    if listed is not None:
        assert listed == _ours_as_cuobjdump_names(code)


def test_relocatable_object_is_read_from_nv_relfatbin(tmp_path):
    obj = _nvcc_build(tmp_path, "rdc", ["-rdc=true", "-gencode", "arch=compute_80,code=[sm_80,compute_80]",
                                        "-gencode", "arch=compute_87,code=sm_87"], shared=False)
    code = device_code(obj)
    assert code.sections == ("__nv_relfatbin",)
    assert (code.sass, code.ptx) == (("sm_80", "sm_87"), ("compute_80",))


# --------------------------------------------------------------------------------------------- runs_on
def test_runs_on_for_the_plugin_library_targets():
    lib = find_plugin_library()
    if lib is None:
        pytest.skip("the plugin library is not built")
    code = device_code(lib)
    sass, ptx = cmake_architectures()
    for cc, arch in (("8.7", "sm_87"), ((8, 6), "sm_86"), ("sm_75", "sm_75")):
        ok, why = code.runs_on(cc)
        assert ok == (arch in sass), why
    ok, why = code.runs_on("7.2")  # Xavier: CUDA 13 cannot build for it, no PTX ≤ 7.2
    assert not ok and why.startswith("no kernel image for sm_72: the library carries ") and "\n" not in why
    assert "CUDA 12" in why and "POLYPSEG_CUDA_ARCHITECTURES" in why
    for cc in ("10.0", "12.0"):  # Blackwell: only through PTX JIT
        ok, why = code.runs_on(cc)
        assert ok == bool(ptx) and ("JIT" in why) == bool(ptx), why


def _code(*names: str) -> DeviceCode:
    entries = []
    for n in names:
        kind, _, arch = n.partition("_")
        suffix = arch[-1] if arch[-1] in "af" else ""
        entries.append(FatbinEntry("sass" if kind == "sm" else "ptx", int(arch.rstrip("af")), suffix, (9, 0),
                                   False, ".nv_fatbin"))
    return DeviceCode("x.so", tuple(n for n in names if n.startswith("sm")),
                      tuple(n for n in names if n.startswith("compute")), ("9.0",), False, (".nv_fatbin",),
                      tuple(entries))


@pytest.mark.parametrize("names, cc, runs", [
    (("sm_80",), "8.6", True),            # desktop: a lower minor of the same major runs
    (("sm_80",), "8.9", True),
    (("sm_86",), "8.0", False),           # … a higher minor does not
    (("sm_87",), "8.6", False),           # Orin SASS does not serve a desktop 8.6
    (("sm_80",), "8.7", False),           # Tegra: no binary compatibility, exact SASS or PTX only
    (("sm_80", "compute_80"), "8.7", True),
    (("sm_86",), "9.0", False),           # never across major versions
    (("sm_90a",), "9.0", True),           # arch-specific: exactly 9.0
    (("compute_90a",), "10.0", False),
    (("sm_100f",), "10.3", True),         # family-specific: later minors of the family
    (("compute_100f",), "12.0", False),
    (("compute_90",), "12.0", True),      # plain PTX: any later compute capability
    (("compute_90",), "8.9", False),
])
def test_binary_and_ptx_compatibility_rules(names, cc, runs):
    ok, why = _code(*names).runs_on(cc)
    assert ok == runs, why


def test_tegra_refusal_says_why():
    ok, why = _code("sm_80", "sm_86").runs_on("8.7")
    assert not ok and "Tegra" in why and "rebuild with 87 in POLYPSEG_CUDA_ARCHITECTURES" in why


def test_parse_cc():
    assert parse_cc("8.7") == parse_cc("87") == parse_cc("sm_87") == parse_cc((8, 7)) == (8, 7)
    assert parse_cc("sm_120") == parse_cc("12.0") == (12, 0) and parse_cc("sm_90a") == (9, 0)
    with pytest.raises(ValueError, match="not a compute capability"):
        parse_cc("volta")


# --------------------------------------------------------------------------------------------- errors
def _one_line_error(path) -> str:
    with pytest.raises(FatbinError) as e:
        device_code(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path):
    assert "no such file" in _one_line_error(tmp_path / "absent.so")


def test_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("not a library\n")
    assert "is not an ELF file" in _one_line_error(p)


def test_elf_without_device_code(tmp_path):
    exe = Path("/bin/ls")
    if exe.is_file():
        assert "carries no CUDA device code" in _one_line_error(exe)
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "plain.cpp"
    src.write_text('extern "C" int answer() { return 42; }\n')
    so = tmp_path / "libplain.so"
    subprocess.run([cxx, "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    assert "carries no CUDA device code" in _one_line_error(so)


def test_directory_and_truncated_file(tmp_path):
    assert "not a regular file" in _one_line_error(tmp_path)
    lib = find_plugin_library()
    if lib is None:
        return
    cut = tmp_path / "cut.so"
    cut.write_bytes(Path(lib).read_bytes()[:4096])  # ELF header intact, section table gone
    assert "truncated" in _one_line_error(cut)
