"""The PHOEBE kernel worker: one PHOEBE bundle in one process, served over signed ZMQ messages.

This package never imports :mod:`phoebe_spawner`.  The hub imports from it only
:mod:`phoebe_kernel_worker.protocol` (and its submodules), which holds exactly what both
sides must agree on: message framing and signing, connection files and readiness
reports, the command names, the schema of the worker's cost caps, exit statuses and the
wording of out-of-memory endings, the kernel's Landlock ABI and the lean ZMQ sends.  The
worker takes those from there too; the rest (``worker``, ``commands``, ``safety/``,
``wall``, ``forkserver``, ...) is worker-only.  ``tests/unit/test_boundary.py`` checks
both directions on the source.
"""
