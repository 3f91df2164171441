"""Build of backgrounder's C engine, backgrounder._backgrounder.

Switches, read from the environment at build time:

  BACKGROUNDER_WERROR=1      warnings are errors (CI builds with it)
  BACKGROUNDER_DEBUG=1       -O0 -g3, assertions and invariant checks on, debug counters
  BACKGROUNDER_SANITIZE=...  "address" (ASan + UBSan) or "thread" (TSan)
"""

import os
import sys
from glob import glob

from setuptools import Extension, setup

# On Windows the compiler is MSVC (setuptools' default there): its own flags,
# and no pthread library (src/platform.h speaks Win32 threads there).
msvc = sys.platform == "win32"

macros = []
link_args = []
libraries = []
if msvc:
    # C11 with its atomics (<stdatomic.h>: VS 2022 17.5 and later); /W3 as
    # CPython builds itself; the CRT's "use the _s variant" notes are off.
    compile_args = ["/std:c11", "/experimental:c11atomics", "/W3"]
    macros.append(("_CRT_SECURE_NO_WARNINGS", "1"))
else:
    compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
    libraries.append("pthread")

if os.environ.get("BACKGROUNDER_WERROR") == "1":
    compile_args.append("/WX" if msvc else "-Werror")

if os.environ.get("BACKGROUNDER_DEBUG") == "1":
    if msvc:
        compile_args += ["/Od", "/Zi", "/UNDEBUG"]
    else:
        compile_args += ["-O0", "-g3", "-UNDEBUG"]
    macros.append(("BG_DEBUG", "1"))

sanitize = os.environ.get("BACKGROUNDER_SANITIZE", "")
if sanitize and msvc:
    raise SystemExit("BACKGROUNDER_SANITIZE is for gcc and clang builds (Linux, macOS)")
if sanitize == "address":
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    # CPython's CFLAGS carry -fwrapv, which turns UBSan's signed-overflow check off.
    compile_args += flags + ["-O1", "-g", "-fno-wrapv"]
    link_args += flags
elif sanitize == "thread":
    flags = ["-fsanitize=thread"]
    compile_args += flags + ["-O1", "-g"]
    link_args += flags
elif sanitize:
    raise SystemExit(f"BACKGROUNDER_SANITIZE must be 'address' or 'thread', not {sanitize!r}")

# Each combination of switches builds in a directory of its own: setuptools
# reuses object files that look newer than their sources, whatever built them.
flavour = "-".join(
    name for name, on in [("werror", os.environ.get("BACKGROUNDER_WERROR") == "1"), ("debug", "BG_DEBUG" in dict(macros)),
                          (sanitize, bool(sanitize))] if on
) or "release"

setup(
    options={"build": {"build_base": os.path.join("build", flavour)}},
    ext_modules=[
        Extension(
            "backgrounder._backgrounder",
            sources=sorted(glob("src/*.c")),
            depends=sorted(glob("src/*.h")),
            include_dirs=["src"],
            define_macros=macros,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            libraries=libraries,
        )
    ],
)
