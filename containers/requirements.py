"""Print hyperbench's requirements (base + the given extras) from pyproject.toml, one per line.

The images install dependencies in a layer of their own, before the source is copied, so that a
code change rebuilds only the last small layer. `pip install .[extra]` would need the source;
this reads the same lists from pyproject.toml, so they are never written twice.

    python requirements.py pyproject.toml hf,bnb [--skip torch]
"""

import argparse
import re
import tomllib

p = argparse.ArgumentParser()
p.add_argument("pyproject")
p.add_argument("extras", nargs="?", default="")
p.add_argument("--skip", default="", help="comma-separated names to leave out (installed already)")
args = p.parse_args()

project = tomllib.load(open(args.pyproject, "rb"))["project"]
reqs = list(project["dependencies"])
for extra in filter(None, args.extras.split(",")):
    reqs += project["optional-dependencies"][extra]  # KeyError names a bad extra: good
skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
for req in dict.fromkeys(reqs):
    name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()
    if name not in skip:
        print(req)
