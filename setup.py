"""Build hook for the optional native extensions; everything else is in pyproject.toml.

  zsagent._md5        (native/md5.c)          without it zsagent.copy.md5 uses hashlib;
  zsagent._rados_copy (native/rados_copy.cpp) server-side RBD object copies (needs a C++ compiler and
                                              librados' C++ headers, Debian's libradospp-dev); without it
                                              RBD templates are written through librbd.
Both are optional: when one does not compile, the install goes on without it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zsagent._md5",
            sources=["native/md5.c"],
            depends=["native/md5_core.h", "native/md5_steps.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "zsagent._rados_copy",
            sources=["native/rados_copy.cpp"],
            language="c++",
            libraries=["rados"],
            extra_compile_args=["-O2", "-std=c++17"],
            optional=True,
        ),
    ]
)
