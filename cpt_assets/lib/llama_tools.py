"""llama.cpp's own tools, from the exact sources the installed llama-cpp-python was built from.

The llama-cpp-python sdist vendors llama.cpp (vendor/llama.cpp): convert_hf_to_gguf.py with its conversion/ package,
gguf-py of the same version, and the C++ tools. Using them, rather than a port, means every architecture llama.cpp
runs converts, and the quantizer, importance-matrix and KL-divergence tools are the ones llama.cpp's own figures come
from. The sources are never taken from a hub or a git checkout: the sdist comes from pip (`pip download --no-deps
--no-binary :all: llama-cpp-python==<installed version>`), from pip's cache, or from a file the caller carries (a
machine without internet).

Layout of the cache (one folder per llama-cpp-python version, so an upgrade never mixes sources):
    <cache>/llama_cpp_python-<v>.tar.gz     the sdist
    <cache>/<v>/llama.cpp/                  its vendor/llama.cpp, unpacked
    <cache>/<v>/build/bin/llama-*           the CMake-built tools (CPU build), built once
The cache is $CPT_LLAMA_CPP_CACHE, else `<virtualenv>/llama.cpp` (beside the llama-cpp-python it matches).

CLI (scripts/setup.sh runs it once):  python -m cpt_assets.lib.llama_tools [--sdist FILE] [--cache DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity")  # the only targets built
CACHE_ENV = "CPT_LLAMA_CPP_CACHE"
# A CPU build of the three tools and nothing else: no server, tests, examples, HTTPS or download support.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)


class LlamaToolError(RuntimeError):
    """A llama.cpp tool failed; the message carries the command and the tail of its output."""


def installed_version() -> str:
    """The installed llama-cpp-python's version: the sources must be the ones it was built from."""
    from importlib.metadata import version

    return version("llama-cpp-python")


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(sys.prefix) / "llama.cpp")


def sdist_name(version: str) -> str:
    return f"llama_cpp_python-{version}.tar.gz"


@dataclass(frozen=True, slots=True)
class LlamaCpp:
    """One unpacked llama.cpp source tree and its tool build folder."""

    version: str  # llama-cpp-python version the sources belong to
    source: Path  # vendor/llama.cpp

    @property
    def converter(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.source / "gguf-py"

    @property
    def build_dir(self) -> Path:
        return self.source.parent / "build"

    def tool(self, name: str) -> Path:
        """The built tool's path; LlamaToolError if it is not built (build_tools makes it)."""
        path = self.build_dir / "bin" / name
        if not path.exists():
            raise LlamaToolError(
                f"llama.cpp tool {name} is not built under {self.build_dir}; run "
                f"`python -m cpt_assets.lib.llama_tools` (scripts/setup.sh does) to build {', '.join(TOOLS)}"
            )
        return path

    def tools_built(self) -> bool:
        return all((self.build_dir / "bin" / name).exists() for name in TOOLS)


def fetch_sdist(version: str, cache: Path) -> Path:
    """The llama-cpp-python sdist of `version` in `cache`, downloaded by pip if absent (pip's cache serves repeats)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / sdist_name(version)
    if target.exists():
        return target
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    command += [f"llama-cpp-python=={version}", "-d", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        raise LlamaToolError(
            f"pip could not download the llama-cpp-python {version} sdist into {cache} "
            f"(carry it and pass --sdist): {done.stderr[-2000:]}"
        )
    return target


def unpack(sdist: Path, cache: Path, version: str | None = None) -> LlamaCpp:
    """Unpack the sdist's vendor/llama.cpp into `<cache>/<version>/llama.cpp` (once; atomic)."""
    sdist = Path(sdist)
    if not sdist.exists():
        raise FileNotFoundError(f"llama-cpp-python sdist {sdist} does not exist")
    stem = sdist.name.removesuffix(".tar.gz")
    if not stem.startswith("llama_cpp_python-"):
        raise ValueError(f"{sdist} is not a llama-cpp-python sdist (llama_cpp_python-<version>.tar.gz)")
    sdist_version = stem.removeprefix("llama_cpp_python-")
    if version is not None and version != sdist_version:
        raise ValueError(f"sdist {sdist.name} is version {sdist_version}, but llama-cpp-python {version} is installed")
    root = Path(cache) / sdist_version
    source = root / "llama.cpp"
    if (source / "convert_hf_to_gguf.py").exists():
        return LlamaCpp(sdist_version, source)
    prefix = f"{stem}/vendor/llama.cpp/"
    staging = root / "llama.cpp.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            if member.name.startswith(prefix):
                member.name = member.name.removeprefix(prefix)
                members.append(member)
        if not members:
            raise ValueError(f"{sdist} has no vendor/llama.cpp")
        archive.extractall(staging, members=members, filter="data")
    staging.rename(source)
    return LlamaCpp(sdist_version, source)


def llama_cpp_sources(sdist: Path | None = None, cache: Path | None = None) -> LlamaCpp:
    """The llama.cpp sources matching the installed llama-cpp-python: from `sdist`, the cache, or pip."""
    cache = Path(cache) if cache else default_cache()
    version = installed_version()
    unpacked = cache / version / "llama.cpp"
    if sdist is None and (unpacked / "convert_hf_to_gguf.py").exists():
        return LlamaCpp(version, unpacked)
    return unpack(Path(sdist) if sdist else fetch_sdist(version, cache), cache, version)


def build_tools(sources: LlamaCpp, jobs: int = 2, tools: Sequence[str] = TOOLS) -> float:
    """CMake-build llama.cpp's quantize, imatrix and perplexity tools (CPU) once; the seconds it took (0 if cached)."""
    if all((sources.build_dir / "bin" / name).exists() for name in tools):
        return 0.0
    started = time.perf_counter()
    configure = ["cmake", "-S", str(sources.source), "-B", str(sources.build_dir), *CMAKE_FLAGS]
    build = ["cmake", "--build", str(sources.build_dir), "-j", str(jobs), "--target", *tools]
    for command in (configure, build):
        run_tool(command, timeout=None)
    seconds = time.perf_counter() - started
    log.info("Built %s in %.0fs", ", ".join(tools), seconds)
    return seconds


def run_tool(
    command: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None, timeout: float | None = 3600
) -> str:
    """Run a llama.cpp tool; its combined output, or LlamaToolError with the command and the output's tail."""
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, timeout=timeout, errors="replace"
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise LlamaToolError(
            f"{Path(str(command[0])).name} failed (exit {done.returncode}): {' '.join(map(str, command))}\n"
            f"{output[-3000:]}"
        )
    return output


def python_env(sources: LlamaCpp) -> dict[str, str]:
    """The environment for llama.cpp's Python scripts: its own gguf-py first, never PyPI's gguf."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(sources.gguf_py), env.get("PYTHONPATH", "")]))
    env.setdefault("NO_LOCAL_GGUF", "")
    return env


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Unpack llama.cpp from the llama-cpp-python sdist and build tools.")
    parser.add_argument("--sdist", type=Path, help="a carried llama_cpp_python-<v>.tar.gz (default: pip download)")
    parser.add_argument("--cache", type=Path, help=f"cache folder (default: ${CACHE_ENV} or <venv>/llama.cpp)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sources = llama_cpp_sources(args.sdist, args.cache)
    seconds = build_tools(sources, jobs=args.jobs)
    state = f"built in {seconds:.0f}s" if seconds else "already built"
    sys.stdout.write(f"llama.cpp {sources.version} at {sources.source}; tools {state} in {sources.build_dir}/bin\n")


if __name__ == "__main__":
    main()
