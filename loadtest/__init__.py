"""Load tests and scaling experiments for tritonchat (Locust users, layouts, runner, plots, report).

Modules that import Locust (which monkey-patches the process with gevent): `users`, `shapes`,
`chat` (the locustfile) and `run_experiment`. The others are plain Python.
"""
