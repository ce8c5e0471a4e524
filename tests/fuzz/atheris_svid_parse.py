"""atheris entry point of the ``svid_parse`` target (see _targets.py and _atheris.py for how to run it)."""

from _atheris import run

if __name__ == "__main__":
    run("svid_parse")
