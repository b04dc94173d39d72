"""Build hook for the optional C extension zsagent._md5 (native/md5.c); everything else is in pyproject.toml.

The extension is optional: when it does not compile (no C compiler, no Python headers), the install goes on
without it and zsagent.copy.md5 uses hashlib.
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
        )
    ]
)
