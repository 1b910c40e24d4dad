"""Build and install bbench (pure Python part; see `_extension` below for the kernels)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version: dict[str, str] = {}
exec((ROOT / "bbench" / "_version.py").read_text(), version)


# --- compiled kernels (csrc/ -> bbench._C) ---------------------------------------------------
# CPU kernels always (unless BBENCH_NO_EXT=1); CUDA kernels only when torch's CUDA libraries are
# really there and nvcc is found (BBENCH_NO_CUDA=1 forces a CPU-only build). TORCH_CUDA_ARCH_LIST
# is honoured; without it and without a visible GPU, DEFAULT_CUDA_ARCHS is used.
DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0+PTX"


def _say(msg: str) -> None:
    print(f"bbench setup: {msg}", file=sys.stderr)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _cuda_build_problem(torch, cpp_extension) -> str | None:
    """Why the CUDA kernels cannot be built here, or None when they can."""
    if _flag("BBENCH_NO_CUDA"):
        return "BBENCH_NO_CUDA is set"
    if not torch.version.cuda or not torch.cuda._is_compiled():
        return f"torch {torch.__version__} is a CPU build"
    # A wheel can report a CUDA version yet ship no CUDA libraries: load them to be sure.
    lib_dir = Path(torch.__file__).parent / "lib"
    missing = [n for n in ("libtorch_cuda.so", "libc10_cuda.so") if not (lib_dir / n).exists()]
    if missing:
        return f"torch reports CUDA {torch.version.cuda} but {lib_dir} lacks {', '.join(missing)}"
    try:
        import ctypes

        ctypes.CDLL(str(lib_dir / "libtorch_cuda.so"))
        ctypes.CDLL(str(lib_dir / "libc10_cuda.so"))
    except OSError as exc:
        return f"torch's CUDA libraries do not load ({exc})"
    home = _cuda_home(cpp_extension.CUDA_HOME, torch.version.cuda)
    if home is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    # torch derives CUDA_HOME from the nvcc on PATH, which may be a wrapper script outside the
    # toolkit (/usr/local/bin/nvcc -> CUDA_HOME=/usr/local, no lib64): use the real toolkit.
    cpp_extension.CUDA_HOME = str(home)
    os.environ["CUDA_HOME"] = str(home)
    nvcc = home / "bin" / "nvcc"
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"{nvcc} does not run ({exc})"
    found = re.search(r"release (\d+)\.(\d+)", out)
    if found and found.group(1) != torch.version.cuda.split(".")[0]:
        return (f"nvcc {found.group(1)}.{found.group(2)} at {nvcc} does not match torch's CUDA "
                f"{torch.version.cuda} (major versions differ)")
    return None


def _cuda_home(torch_guess: str | None, cuda_version: str) -> Path | None:
    """A CUDA toolkit with bin/nvcc and include/cuda_runtime.h: CUDA_HOME / CUDA_PATH, torch's
    guess, the toolkit of the nvcc on PATH, then /usr/local/cuda(-X.Y)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), torch_guess]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
        try:  # a wrapper script: ask nvcc where its toolkit is
            out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True).stderr
            for line in out.splitlines():
                if "TOP=" in line:
                    candidates.append(str(Path(line.split("TOP=", 1)[1].strip()).resolve()))
        except OSError:
            pass
    candidates += [f"/usr/local/cuda-{cuda_version}", "/usr/local/cuda"]
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists() and (Path(c) / "include" / "cuda_runtime.h").exists():
            return Path(c)
    return None


def _extension() -> dict:
    """ext_modules / cmdclass for setup(): {} gives a pure-Python install (reference kernels)."""
    if _flag("BBENCH_NO_EXT"):
        _say("BBENCH_NO_EXT is set: pure-Python install, the ops use their PyTorch references")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # noqa: BLE001 - any failure to import torch means no extension
        _say(f"torch is not importable ({exc}): pure-Python install. Install torch first and use "
             "pip install --no-build-isolation to build the kernels")
        return {}
    cpp = ["csrc/ops.cpp"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    cuda = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    cxx = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-DBBENCH_PYTHON_MODULE"]
    problem = _cuda_build_problem(torch, cpp_extension)
    if problem is None:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.device_count():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        _say(f"building CPU and CUDA kernels (TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPUs')})")
        ext = cpp_extension.CUDAExtension(
            "bbench._C", cpp + cuda,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"])
    else:
        _say(f"building CPU kernels only: {problem}")
        ext = cpp_extension.CppExtension("bbench._C", cpp, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"])
    return {"ext_modules": [ext],
            "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=_ensure_ninja())}}


def _ensure_ninja() -> bool:
    """Put the ninja of the `ninja` package on PATH (pip does not when the venv is not active)."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja
    except ImportError:
        _say("ninja not found: building with setuptools, one file at a time (pip install ninja)")
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return True


setup(
    name="bbench",
    version=version["__version__"],
    description="Benchmark harness for multimodal imbalance learning",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bbench", "bbench.*"]),
    package_data={"bbench": ["config/presets/*.toml", "config/presets/*/*.toml",
                             "data/resources/*/*", "py.typed"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "tabulate",
        "tqdm",
        "h5py>=3.0",
        "transformers>=4.30",
        "scikit-learn>=1.3",
        "scipy>=1.10",       # studies: paired tests across seeds
        "matplotlib>=3.7",   # reports: the paper's figures as PNG and SVG
        "tomli>=1.1; python_version<'3.11'",
    ],
    extras_require={
        "prepare": ["imageio-ffmpeg>=0.4.9"],
        # google-crc32c: the event files' checksums in C (engine/tensorboard.py); without
        # it TensorBoard's pure-Python CRC is used, about 50 us an epoch.
        "tensorboard": ["tensorboard", "google-crc32c>=1.5"],
        "test": ["pytest>=7", "pytest-benchmark", "pytest-xdist", "hypothesis", "tensorboard",
                 "google-crc32c>=1.5", "imageio-ffmpeg>=0.4.9", "fvcore"],
    },
    entry_points={"console_scripts": ["bbench=bbench.cli:main"],
                  "pytest11": ["bbench = bbench.pytest_plugin"]},
    **_extension(),
)
