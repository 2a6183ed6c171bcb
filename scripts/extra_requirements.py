"""Print the requirements of one optional-dependency group of pyproject.toml, one a line.

`make vllm-install` installs the `vllm` extra into a virtualenv of its own (its pins clash
with the default install's), so it reads the group here instead of repeating it.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def main() -> None:
    group = sys.argv[1]
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    print("\n".join(project["optional-dependencies"][group]))


if __name__ == "__main__":
    main()
