"""atheris entry point of the ``spiffe_id`` target (see _targets.py and _atheris.py for how to run it)."""

from _atheris import run

if __name__ == "__main__":
    run("spiffe_id")
