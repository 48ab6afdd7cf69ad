"""How the C++/CUDA extension is built: ahead of time by setup.py, or at first import (load.py).

Both read the same source list and flags (sources.py) and pick the compiler the same way
(compiler_choice.py). docs/build.md says when each path is taken and why.
"""
