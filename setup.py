"""The one thing pyproject.toml cannot say without an experimental table: the C extension.

The hot path's frame mover (src/zmeshlib/sockets/frames.py) is optional: without
a C compiler the build skips it and the package runs on the pure-Python mover.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zmeshlib.sockets._frames",
            sources=["src/zmeshlib/sockets/_frames.c"],
            optional=True,
        )
    ]
)
