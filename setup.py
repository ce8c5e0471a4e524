"""The one thing pyproject.toml cannot say without an experimental table: the C extensions.

Both are optional: without a C compiler the build skips them and the package
runs on their pure-Python equivalents. They are the hot path's frame mover
(src/zmeshlib/sockets/frames.py) and the envelope's hot-path shapes
(src/zmeshlib/wire/envelope.py, "the compiled hot path").
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
    ]
)
