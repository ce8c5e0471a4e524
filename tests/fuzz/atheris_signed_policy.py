"""atheris entry point of the ``signed_policy`` target (see _wire_targets.py and _atheris.py)."""

from _atheris import run

if __name__ == "__main__":
    run("signed_policy")
