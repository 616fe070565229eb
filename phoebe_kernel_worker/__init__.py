"""The PHOEBE kernel worker: one PHOEBE bundle in one process, served over signed ZMQ messages.

This package never imports :mod:`phoebe_spawner`; the hub and the worker share only
:mod:`phoebe_kernel_worker.protocol`.
"""
