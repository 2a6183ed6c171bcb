"""Unit tests of the load-test package.

Locust monkey-patches the whole process with gevent when it is imported, which would change
how every other test in this pytest process runs. The modules under test that import Locust
(`loadtest.users`, `loadtest.shapes`) are therefore imported here once with the patching
switched off; the variable is removed again at once, so the Locust subprocesses the
integration tests start are patched as usual.
"""

from __future__ import annotations

import os

_previous = os.environ.get("LOCUST_SKIP_MONKEY_PATCH")
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
try:
    import locust  # noqa: F401
finally:
    if _previous is None:
        del os.environ["LOCUST_SKIP_MONKEY_PATCH"]
    else:
        os.environ["LOCUST_SKIP_MONKEY_PATCH"] = _previous
