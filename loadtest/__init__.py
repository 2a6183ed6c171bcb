"""The measurement stack: `tritonchat bench`, Locust load tests and scaling experiments (users,
workload, layouts, runner, plots, report), all timed by `timing`.

Modules that import Locust (which monkey-patches the process with gevent): `users`, `shapes`,
`chat` (the locustfile) and `run_experiment`. The others are plain Python.
"""
