"""The one thing pyproject.toml cannot say without an experimental table: the C extensions.

All are optional: without a C compiler the build skips them and the package
runs on their pure-Python equivalents (src/zmeshlib/_compiled.py says which
exist and how to switch them off).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zmeshlib.sockets._frames",
            sources=["src/zmeshlib/sockets/_frames.c"],
            optional=True,
        ),
        Extension(
            "zmeshlib.wire._plain",
            sources=["src/zmeshlib/wire/_plain.c"],
            optional=True,
        ),
        Extension(
            "zmeshlib._message",
            sources=["src/zmeshlib/_message.c"],
            optional=True,
        ),
    ]
)
