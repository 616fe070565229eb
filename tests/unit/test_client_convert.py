"""The client's pure parts: value conversions, URL/token resolution, error mapping."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import orjson
import pytest

from phoebe_spawner.client import (
    AuthenticationError,
    CommandTimeout,
    ConfigurationError,
    LimitReached,
    RateLimited,
    ServerError,
    SessionEnded,
    WorkerUnavailable,
)
from phoebe_spawner.client._config import resolve_token, resolve_url
from phoebe_spawner.client._convert import (
    dumps,
    model_arrays,
    numeric_array,
    quantities,
    solution_arrays,
    split_quantity,
)
from phoebe_spawner.client._errors import error_for_status


def test_numeric_lists_become_arrays_and_others_do_not() -> None:
    floats = numeric_array([0.0, 0.5, None])
    assert floats.dtype == np.float64 and np.isnan(floats[2])
    assert numeric_array([1, 2, 3]).dtype == np.int64
    assert numeric_array([[1, 2.5], [3, 4]]).shape == (2, 2)
    for unchanged in ([], ["a", "b"], [True, False], [1, "a"], [[1], 2], [[1, 2], [3]], 5, None):
        out = numeric_array(unchanged)
        assert out is unchanged or out == unchanged
        assert not isinstance(out, np.ndarray)


def test_quantities_and_model_results() -> None:
    param = quantities(
        {"quantity": {"value": 1.5, "unit": "d"}, "limits": [{"value": 0, "unit": "d"}, None]}
    )
    assert param["quantity"] == 1.5 * u.d and param["limits"][0] == 0 * u.d
    arr = quantities({"value": [1, 2], "unit": "km / s"})
    assert isinstance(arr, u.Quantity) and arr.unit == u.km / u.s and arr.shape == (2,)
    assert quantities({"value": 1, "unit": "no such unit"}) == {"value": 1, "unit": "no such unit"}
    model = model_arrays({"model": {"lc01": {"times": [0, 1], "fluxes": [1.0, None]}}})
    assert np.isnan(model["model"]["lc01"]["fluxes"][1])
    assert model["model"]["lc01"]["times"].dtype == np.int64
    solution = solution_arrays(
        {
            "solution": {
                "fit_parameters": ["teff@primary"],
                "initial_values": [6000.0],
                "fitted_values": None,
            }
        }
    )["solution"]
    assert solution["initial_values"].tolist() == [6000.0] and solution["fitted_values"] is None
    assert solution["fit_parameters"] == ["teff@primary"]


def test_outgoing_values() -> None:
    body = orjson.loads(
        dumps({"a": np.arange(6)[::2], "s": np.float32(1.5), "unit": u.km, "t": (1, 2)})
    )
    assert body == {"a": [0, 2, 4], "s": 1.5, "unit": "km", "t": [1, 2]}
    with pytest.raises(TypeError, match="set_value"):
        dumps({"v": np.arange(3) * u.d})
    with pytest.raises(TypeError, match="object"):
        dumps({"v": object()})
    assert split_quantity(np.array([1.0, 2.0]) * u.h) == ([1.0, 2.0], "h")
    assert split_quantity(3.0) == (3.0, None)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PHOEBE_SPAWNER_URL": "http://h:8001"}, "http://h:8001/"),
        (
            {"JUPYTERHUB_PUBLIC_HUB_URL": "https://x.org/jhub/hub/"},
            "https://x.org/jhub/services/phoebe/",
        ),
        (
            {
                "JUPYTERHUB_PUBLIC_HUB_URL": "https://x.org/hub/",
                "PHOEBE_SPAWNER_SERVICE_NAME": "ph",
            },
            "https://x.org/services/ph/",
        ),
        (
            {
                "JUPYTERHUB_PUBLIC_URL": "https://x.org/base/user/ada/",
                "JUPYTERHUB_BASE_URL": "/base/",
            },
            "https://x.org/base/services/phoebe/",
        ),
    ],
)
def test_urls_from_the_environment(env: dict[str, str], expected: str) -> None:
    assert resolve_url(None, env) == expected
    assert resolve_url("http://given:1/api", env) == "http://given:1/api/"


def test_url_errors_say_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="PHOEBE_SPAWNER_URL"):
        resolve_url(None, {})
    with pytest.raises(ConfigurationError, match="http"):
        resolve_url("localhost:8001", {})


def test_token_schemes() -> None:
    assert resolve_token("t", None, {"JUPYTERHUB_API_TOKEN": "j"}) == ("t", "Bearer")
    assert resolve_token(None, None, {"JUPYTERHUB_API_TOKEN": "j"}) == ("j", "token")
    assert resolve_token(
        None, None, {"PHOEBE_SPAWNER_TOKEN": "p", "JUPYTERHUB_API_TOKEN": "j"}
    ) == (
        "p",
        "Bearer",
    )
    assert resolve_token(None, "Bearer", {"JUPYTERHUB_API_TOKEN": "j"}) == ("j", "Bearer")
    assert resolve_token(None, None, {}) == (None, "Bearer")


def test_error_classes_by_status() -> None:
    assert type(error_for_status(401, "x")) is AuthenticationError
    assert type(error_for_status(503, "x")) is WorkerUnavailable
    assert type(error_for_status(504, "x")) is CommandTimeout
    limited = error_for_status(429, "slow down", "7")
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0
    assert type(error_for_status(429, "full")) is LimitReached
    other = error_for_status(507, "quota")
    assert type(other) is ServerError and other.status == 507 and str(other) == "quota"
    body = {"detail": "gone", "reason": "idle for 1800 s", "checkpoint_id": "c1"}
    ended = error_for_status(410, "gone", None, body)
    assert type(ended) is SessionEnded and isinstance(ended, WorkerUnavailable)
    assert (ended.status, ended.reason, ended.checkpoint_id) == (410, "idle for 1800 s", "c1")
    bare = error_for_status(410, "gone", None, "not JSON")
    assert (bare.reason, bare.checkpoint_id) == (None, None)
