"""The worker's checks on what clients send, grouped by what each one protects.

PHOEBE evaluates strings with ``eval``, runs ``exec`` on code parameters, starts
processes for detached jobs and servers, looks classes and methods up by name and
allocates whatever a request asks for.  Every check that stands between a client and
those sites lives in this package, one module per thing protected:

========================  ==============================================================
module                    protects
========================  ==============================================================
``expressions``           the strings PHOEBE ``eval``-s: constraint expressions (an AST
                          allow-list), the safe labels of their variables, which
                          parameters may be variables
``units``                 astropy's unit parser: the unit-string grammar
``visible_if``            PHOEBE's ``visible_if`` lookups: the condition grammar
``copy_for``              PHOEBE's per-component/per-dataset parameter copies
``object_dicts``          the dicts PHOEBE builds objects from (``distl``, ``nparray``)
``values``                plain data: the one value walker, limits as parameters
``arguments``             every command's keyword names and PHOEBE filter arguments
``edits``                 ``set_value`` and ``add_dataset`` against the live bundle
``runs``                  ``run_compute`` and ``run_solver`` arguments
``ui_parameters``         ``attach_parameters`` specs (client parameters in ``ui``)
``costs``                 the worker's memory: mesh size, mesh output, array lengths
``bundle``                ``load_bundle``: a whole client bundle before ``phoebe.load``
``patches``               the last line: guards patched into PHOEBE's eval/exec/process
                          sites and astropy's unit parser, whatever path a value took
``patterns``              (used by all) the one table of name, label and tag patterns
========================  ==============================================================

:class:`phoebe_kernel_worker.commands.PhoebeSession` calls the command checks, the
bundle check and :func:`~phoebe_kernel_worker.safety.patches.install_phoebe_guards`.
Everything here but ``patches`` (and ``edits``' dataset lookup) is pure and imports no
PHOEBE; refusals raise :class:`~phoebe_kernel_worker.errors.UnsafeInput` (could run
code, start processes, touch files) or :class:`~phoebe_kernel_worker.errors.CommandError`
(malformed).  This package re-exports nothing: import from the module that holds a check.
"""
