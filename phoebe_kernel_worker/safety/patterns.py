"""The one table of what a safe name, label, tag or kind looks like.

Every regular expression and every tag or kind table the checks of
:mod:`phoebe_kernel_worker.safety` match client strings against lives here, so a
pattern is tightened in one place and the command checks and the bundle checks cannot
drift apart.  Each entry says what it matches and who uses it.  Pure: no PHOEBE import.
"""

from __future__ import annotations

import re

__all__ = [
    "COMPONENT_KINDS",
    "CONTEXTS",
    "DATASET_KINDS",
    "FEATURE_KINDS",
    "FORMAT_FIELD_RE",
    "HIERARCHY_RE",
    "LABEL_RE",
    "META_TAGS",
    "NAME_RE",
    "NPARRAY_KEY_RE",
    "PLACEHOLDER_RE",
    "PRINTABLE_ASCII_RE",
    "QUALIFIER_RE",
    "SELECTOR_RE",
    "TAG_RE",
    "TAG_VALUE_RE",
    "TIME_RE",
    "TWIG_FILTER_RE",
    "TWIG_RE",
    "UNIQUEID_RE",
    "UNIT_NAME_POWER_RE",
    "UNIT_TOKEN_RE",
    "VERSION_RE",
    "VISIBLE_IF_VALUE_RE",
    "is_quote_safe",
]

# ------------------------------------------------------------------------ tags and kinds

#: The tags that label every PHOEBE parameter (a parameter dict's "meta" keys).
META_TAGS: tuple[str, ...] = (
    "qualifier",
    "feature",
    "component",
    "dataset",
    "constraint",
    "distribution",
    "compute",
    "model",
    "solver",
    "solution",
    "figure",
    "kind",
    "context",
)

#: The real dataset kinds; ``add_dataset(kind=...)`` is resolved by PHOEBE with
#: ``getattr`` on ``phoebe.parameters.dataset``, so nothing else may pass.
DATASET_KINDS: frozenset[str] = frozenset({"lc", "rv", "lp", "orb", "mesh"})
#: Component kinds a loaded bundle may hold (PHOEBE resolves them to code by name).
COMPONENT_KINDS: frozenset[str] = frozenset({"star", "orbit", "envelope"})
#: Feature kinds (spots, offsets, Gaussian processes).
FEATURE_KINDS: frozenset[str] = frozenset(
    {"spot", "rv_offset", "gp_sklearn", "gp_celerite2", "gaussian_process"}
)
#: The contexts of PHOEBE's parameters (``ui`` holds the client's own parameters).
CONTEXTS: frozenset[str] = frozenset(
    {
        "system",
        "component",
        "feature",
        "dataset",
        "constraint",
        "distribution",
        "compute",
        "model",
        "solver",
        "solution",
        "figure",
        "setting",
        "ui",
    }
)

# ------------------------------------------------------------------ names and labels

#: A new label (dataset, model, solution, copy_for label): PHOEBE's label rule, bounded.
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")
#: An existing label a run selects (compute, solver, ...): may start with ``_``.
SELECTOR_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
#: A Python-style name: keyword argument names, visible_if qualifiers.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The qualifier of a client (``attach_parameters``) parameter.
QUALIFIER_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: A uniqueid a client chooses or a loaded bundle carries.
UNIQUEID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A twig inside a constraint expression, a TwigParameter value, a constraint's
#: additional variable.
TWIG_RE = re.compile(r"[A-Za-z0-9_@,]{1,256}")
#: The ``twig`` filter argument of a command (wildcards and brackets allowed).
TWIG_FILTER_RE = re.compile(r"[A-Za-z0-9_@,.*?\-\[\]]{0,1024}")
#: The value of any other filter tag of a command (wildcards allowed).
TAG_VALUE_RE = re.compile(r"[A-Za-z0-9_@,*?\-]{0,256}")
#: The value of a tag of a loaded bundle's parameter.
TAG_RE = re.compile(r"[A-Za-z0-9_,]{0,128}")
#: A ``time`` tag given as a string.
TIME_RE = re.compile(r"[0-9eE+\-.]{1,40}")
#: A loaded bundle's hierarchy string (``orbit:binary(star:primary, star:secondary)``).
HIERARCHY_RE = re.compile(r"[A-Za-z0-9_:(), ]{0,4096}")
#: A PHOEBE version string (``2.5.4``, ``2.5.0.dev1``).
VERSION_RE = re.compile(r"(\d+)\.(\d+)(\.\d+)?(\.dev.*)?")
#: A key of a loaded bundle's ``nparray`` dict.
NPARRAY_KEY_RE = re.compile(r"[a-z_]{1,32}")
#: A ``{field}`` of a ``latexfmt`` template: a plain name, no attributes or indexes.
FORMAT_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# --------------------------------------------------------------------------- strings

#: Printable ASCII (constraint expressions, strings pasted between quotes).
PRINTABLE_ASCII_RE = re.compile(r"[ -~]*")
#: A ``{twig}`` placeholder, the pattern ``ConstraintParameter._parse_expr`` uses.
PLACEHOLDER_RE = re.compile(r"\{.[^{}]*\}")
#: One token of a unit string (see :mod:`phoebe_kernel_worker.safety.units`).
UNIT_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<power>(?:\*\*|\^)\s*(?:\(\s*[+-]?[0-9]{1,2}\s*\)|[+-]?[0-9]{1,2}))
    | (?P<name>[A-Za-z_]+(?:[+-]?[0-9]{1,2})?)
    | (?P<one>1)
    | (?P<op>[*/])
    | (?P<open>\()
    | (?P<close>\))
    """,
    re.VERBOSE,
)
#: A unit name with its optional power (``m2``, ``s-1``).
UNIT_NAME_POWER_RE = re.compile(r"[A-Za-z_]+([+-]?[0-9]+)?")
#: The value side of a visible_if condition (``[!~]`` and alternatives joined by ``|``).
VISIBLE_IF_VALUE_RE = re.compile(r"[!~]?[A-Za-z0-9_.*+\-|]{1,256}")


def is_quote_safe(text: str) -> bool:
    """Whether ``text`` can be pasted between single quotes in Python source harmlessly.

    PHOEBE pastes string values of constraint variables as ``'{}'.format(value)``; a
    quote, a backslash or a control character could end or bend that literal.  Used
    for choice values, distribution strings and dict keys that may reach such text.
    """
    return (
        isinstance(text, str)
        and len(text) <= 1024
        and PRINTABLE_ASCII_RE.fullmatch(text) is not None
        and "'" not in text
        and "\\" not in text
    )
