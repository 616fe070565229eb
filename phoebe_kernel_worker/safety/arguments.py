"""Command arguments: the keyword names a command takes and the filters it hands PHOEBE.

Every command's keyword arguments pass here before anything reaches PHOEBE
(:class:`phoebe_kernel_worker.commands.PhoebeSession` and the per-command checks of
:mod:`~phoebe_kernel_worker.safety.edits`, :mod:`~phoebe_kernel_worker.safety.runs` and
:mod:`~phoebe_kernel_worker.safety.ui_parameters`):

* :data:`DENIED_KWARGS`: names refused by every command (they start processes, write
  files or are code), with the reason the client is given;
* :func:`check_kwargs`: a command's own argument names;
* :func:`check_filter_kwargs` / :func:`filter_only`: PHOEBE's filter tags and flags,
  with :data:`PHOEBE_ACTED_ON_KWARGS` refused and other names dropped unread;
* :func:`check_label`, :func:`check_uniqueid` and the small checkers of single
  argument values (:func:`check_bool`, :func:`check_number`, ...).

Pure: no PHOEBE import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.safety.patterns import (
    LABEL_RE,
    META_TAGS,
    NAME_RE,
    SELECTOR_RE,
    TAG_VALUE_RE,
    TIME_RE,
    TWIG_FILTER_RE,
    UNIQUEID_RE,
)
from phoebe_kernel_worker.safety.values import check_plain_value

__all__ = [
    "DENIED_KWARGS",
    "FILTER_FLAGS",
    "FILTER_TAGS",
    "PHOEBE_ACTED_ON_KWARGS",
    "check_bool",
    "check_filter_kwargs",
    "check_index",
    "check_kwargs",
    "check_label",
    "check_number",
    "check_positive_int",
    "check_selector",
    "check_selector_list",
    "check_uniqueid",
    "filter_only",
]

#: Filter tags accepted wherever PHOEBE filters parameters (get_value, set_value, ...).
#: ``server`` is left out on purpose: the worker has no server context.
FILTER_TAGS: frozenset[str] = frozenset({"twig", "uniqueid", "time", *META_TAGS})

#: Boolean switches of PHOEBE's filter calls.
FILTER_FLAGS: frozenset[str] = frozenset(
    {"check_visible", "check_default", "check_advanced", "check_single"}
)

#: Names PHOEBE itself acts on when they reach a filter call (its filter matches on them,
#: or ``get_value``/``set_value`` hand them on to the Parameter, which reads them) and
#: which this service does not accept.  A filter-taking command refuses them unless it
#: lists them as its own arguments; every other unknown name is ignored, as PHOEBE's
#: filter ignores it (see :func:`check_filter_kwargs`).
_ACTED_ON_NAMES = (
    "server uniquetwig constraint_func value autocomplete force_ps force run_checks "
    "run_constraints from_constraint from_flip_bundle_constraint skip_update_choices "
    "bundle parent_ps return_quantity required_shape allow_value_as_first_arg timederiv "
    "index unit t default expand"
)
PHOEBE_ACTED_ON_KWARGS: frozenset[str] = frozenset(_ACTED_ON_NAMES.split())

#: Keyword arguments refused by every command, with the reason given to the client.
DENIED_KWARGS: Mapping[str, str] = {
    "detach": "detached jobs start processes and write scripts",
    "use_server": "remote/threaded servers start processes",
    "server": "remote/threaded servers start processes",
    "sleep": "only used by detached jobs",
    "jobid": "names script files of detached jobs",
    "out_fname": "writes files",
    "fname": "writes files",
    "filename": "reads or writes files",
    "script_fname": "writes files",
    "save": "writes files",
    "export": "writes files",
    "custom_lnprobability_callable": "is code",
    "continue_from_ps": "internal to PHOEBE",
    "ignore_readonly": "readonly parameters stay readonly",
    "allow_not_in_choices": "choice parameters only take their choices",
    "check_label": "labels are always checked",
    "return_changes": "not supported by this service",
}


def check_label(value: Any, what: str) -> str:
    """Check a new label (dataset, model, solution): PHOEBE's label rule, bounded length."""
    if not isinstance(value, str) or not LABEL_RE.fullmatch(value):
        raise CommandError(
            f"{what} must be 1-64 letters, digits or '_' and start with a letter or digit"
        )
    return value


def check_uniqueid(value: Any) -> str:
    """Check a client-chosen uniqueid: a string of at most 64 ``[A-Za-z0-9_-]``."""
    if not isinstance(value, str) or not UNIQUEID_RE.fullmatch(value):
        raise CommandError("uniqueid must be a string of 1-64 characters from [A-Za-z0-9_-]")
    return value


def check_kwargs(command: str, kwargs: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse keyword arguments of ``command`` that are denied or not in ``allowed``."""
    allowed_set = set(allowed)
    for key in kwargs:
        if not isinstance(key, str):
            raise CommandError(f"{command}: argument names must be strings")
        if key in DENIED_KWARGS and key not in allowed_set:
            raise UnsafeInput(f"{command}: argument {key!r} is not allowed ({DENIED_KWARGS[key]})")
        if key not in allowed_set:
            raise CommandError(
                f"{command}: unknown argument {key!r} (accepted: {', '.join(sorted(allowed_set))})"
            )


def check_filter_kwargs(
    command: str, kwargs: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Check PHOEBE filter arguments; return the ones to hand to PHOEBE.

    Tags hold strings (or lists of them), flags bools.  ``extra`` maps further accepted
    argument names to a checker callable (or ``None`` to accept any plain JSON value).
    Names in :data:`DENIED_KWARGS` and :data:`PHOEBE_ACTED_ON_KWARGS` (unless in
    ``extra``) are refused.  Any other name is tolerated the way PHOEBE's filter
    tolerates it: PHOEBE ignores keyword arguments that are not tags, so clients such
    as PHOEBE Lab send widget options (``options=[...]``) along; such names are dropped
    here, unread, and never reach PHOEBE.
    """
    extra = dict(extra or {})
    accepted = FILTER_TAGS | FILTER_FLAGS | set(extra)
    refused = set(DENIED_KWARGS) | PHOEBE_ACTED_ON_KWARGS
    kept: dict[str, Any] = {}
    for key in kwargs:
        if not isinstance(key, str):
            raise CommandError(f"{command}: argument names must be strings")
        if key in accepted:
            kept[key] = kwargs[key]
        elif key in refused:
            check_kwargs(command, {key: None}, accepted)  # raises with the reason
        elif not NAME_RE.fullmatch(key):
            raise CommandError(f"{command}: invalid argument name {key[:64]!r}")
    for key, value in kept.items():
        if key in FILTER_FLAGS:
            if not isinstance(value, bool):
                raise CommandError(f"{command}: {key} must be true or false")
        elif key in FILTER_TAGS:
            _check_tag_value(command, key, value)
        else:
            checker = extra[key]
            if checker is None:
                check_plain_value(value, f"{command}: {key}")
            else:
                checker(value)
    return kept


def _check_tag_value(command: str, key: str, value: Any) -> None:
    if key == "time" and (
        (isinstance(value, int | float) and not isinstance(value, bool))
        or (isinstance(value, str) and TIME_RE.fullmatch(value))
    ):
        return
    if key == "twig" and isinstance(value, str) and TWIG_FILTER_RE.fullmatch(value):
        return
    values = value if isinstance(value, list) else [value]
    if len(values) > 1000:
        raise CommandError(f"{command}: too many values for {key}")
    for item in values:
        if item is None:
            continue
        if not isinstance(item, str) or not TAG_VALUE_RE.fullmatch(item):
            raise CommandError(
                f"{command}: {key} must be a label (letters, digits, '_', '@', ',', wildcards)"
            )


def filter_only(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The filter tags and flags out of a command's keyword arguments."""
    return {k: v for k, v in kwargs.items() if k in FILTER_TAGS or k in FILTER_FLAGS}


# ------------------------------------------------------------------ single values


def check_bool(value: Any) -> None:
    """A switch: true or false."""
    if not isinstance(value, bool):
        raise CommandError("expected true or false")


def check_number(value: Any) -> None:
    """A number (not a bool)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CommandError("expected a number")


def check_index(value: Any) -> None:
    """An array index (``set_value(index=...)``)."""
    if type(value) is not int:
        raise CommandError("index must be an integer")


def check_positive_int(value: Any) -> None:
    """A count such as ``sample_num``: 1 to 100000."""
    if type(value) is not int or not 0 < value <= 100_000:
        raise CommandError("expected a positive integer")


def check_selector(value: Any) -> None:
    """An existing label a run selects (compute, solver, solution, sample mode)."""
    if not isinstance(value, str) or not SELECTOR_RE.fullmatch(value):
        raise CommandError(f"expected a label, got {value!r}")


def check_selector_list(value: Any) -> None:
    """``None``, a selector, or a list of selectors."""
    if value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        check_selector(item)
