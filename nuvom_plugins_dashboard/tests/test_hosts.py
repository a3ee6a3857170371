"""Without a token the dashboard answers only to loopback host names and ``allowed_hosts``:
a page whose name an attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin with the
dashboard, so an ``Origin`` check alone lets it read jobs and post a form it fetched."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dash_fixtures import kernel as kernel  # a fixture
from dash_fixtures import make_client as make_client  # a fixture
from dash_fixtures import project as project  # a fixture
from dash_helpers import csrf_of, record
from starlette.testclient import TestClient

from nuvom_kernel.errors import PluginConfigError
from nuvom_kernel.kernel import Kernel
from nuvom_plugins_dashboard import create_app

CARD = "4111-1111-1111-1111"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8181", "localhost", "LOCALHOST:8181",
                                  "[::1]", "[::1]:8181", "127.1.2.3:80"])
def test_loopback_names_are_answered(make_client: Callable[..., TestClient], host: str
                                     ) -> None:
    assert make_client().get("/jobs", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["rebind.attacker.example:8181", "attacker.example",
                                  "localhost.attacker.example", "127.0.0.1.attacker.example",
                                  "10.0.0.5:8181", "[::1", "localhost:http"])
def test_any_other_host_is_refused_before_it_reads_or_acts(
        kernel: Kernel, make_client: Callable[..., TestClient], host: str) -> None:
    kernel.results.put(record("pay-1", args=[CARD]))
    client = make_client()
    for url in ("/", "/jobs", "/jobs/pay-1", "/actions/retry/pay-1", "/static/htmx.min.js"):
        response = client.get(url, headers={"Host": host})
        assert response.status_code == 421, (url, response.text[:200])
        assert CARD not in response.text and 'name="csrf"' not in response.text
        assert "set-cookie" not in response.headers, "no CSRF cookie for that origin"
        assert "[plugins.dashboard] allowed_hosts" in response.text
        assert "NUVOM_PLUGINS__DASHBOARD__ALLOWED_HOSTS" in response.text
        assert response.headers["x-frame-options"] == "DENY"
    # The whole attack: a CSRF form and cookie (the rebinding page would have fetched them
    # the same way), posted with the page's own Host and a matching Origin.
    token = csrf_of(client.get("/actions/retry/pay-1").text)
    posted = client.post("/actions/retry/pay-1", data={"csrf": token, "run": "1"},
                         headers={"Host": host, "Origin": f"http://{host}"})
    assert posted.status_code == 421
    assert kernel.queue.peek_state("pay-1") is None, "the job was not retried"


def test_allowed_hosts_admits_the_names_a_reverse_proxy_forwards(
        kernel: Kernel, make_client: Callable[..., TestClient]) -> None:
    kernel.results.put(record("pay-1"))
    client = make_client(allowed_hosts=["dash.example.com", "ops.example.com"])
    for host in ("dash.example.com", "DASH.example.com:443", "ops.example.com", "127.0.0.1"):
        assert client.get("/jobs/pay-1", headers={"Host": host}).status_code == 200, host
    assert client.get("/jobs/pay-1", headers={"Host": "evil.example.com"}).status_code == 421
    proxied = {"Host": "dash.example.com", "Origin": "https://dash.example.com"}
    token = csrf_of(client.get("/actions/retry/pay-1", headers=proxied).text)
    done = client.post("/actions/retry/pay-1", data={"csrf": token, "run": "1"}, headers=proxied)
    assert done.status_code == 303
    # one comma-separated string, as in [plugins.dashboard] allowed_hosts
    one = make_client(allowed_hosts="dash.example.com, ops.example.com")
    assert one.get("/jobs", headers={"Host": "ops.example.com"}).status_code == 200


def test_with_a_token_the_token_decides_whatever_the_host(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(token="s3cret")
    host = {"Host": "dash.example.com"}
    assert client.get("/jobs", headers=host).status_code == 401
    assert client.get("/jobs", headers={**host, "Authorization": "Bearer s3cret"}
                      ).status_code == 200


@pytest.mark.parametrize("value", ["https://dash.example.com/", "dash.example.com/admin",
                                   "dash example.com", "dash.example.com:x"])
def test_an_entry_that_is_not_a_host_name_is_refused_naming_the_setting(
        kernel: Kernel, value: str) -> None:
    with pytest.raises(PluginConfigError, match="NUVOM_PLUGINS__DASHBOARD__ALLOWED_HOSTS"):
        create_app(kernel, allowed_hosts=value)
