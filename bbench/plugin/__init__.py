"""The parts of bbench's pytest plugin; the hooks and items are `bbench.pytest_plugin`.

Laid out like pytest-benchmark's plugin: `session` (per-session state), `storage` (saves and
baselines on disk), `table` (the terminal summary), `utils` (shared helpers). Importing any of
them imports neither torch nor the training code.
"""
