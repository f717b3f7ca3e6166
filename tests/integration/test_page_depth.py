"""Paginated lists stop at 10,000 rows deep: PostgreSQL reads and drops every row before a page,
so ``?page=10000&page_size=100`` made one request skip a million rows. ``page`` goes up to 100 and
``page_size`` up to 100, bounds the OpenAPI document states exactly; past them the answer is 422
``VALIDATION_ERROR`` naming the limit."""
import pytest

from api.fields import MAX_PAGE, MAX_PAGE_DEPTH, MAX_PAGE_SIZE
from tests.helpers import issued
from tests.integration.apikit import auth


@pytest.fixture(scope="module")
def code(stack):
    return issued()


def lists(code: str) -> list[str]:
    """Each paginated list's URL."""
    return ["/certificates", f"/certificates/{code}/operations", f"/certificates/{code}/audit",
            "/adjustments", "/transfers"]


def test_no_page_reaches_past_10000_rows():
    assert MAX_PAGE * MAX_PAGE_SIZE == MAX_PAGE_DEPTH == 10_000


@pytest.mark.parametrize("index", range(5))
def test_a_page_past_the_limit_is_422_naming_it(client, code, index):
    url = lists(code)[index]
    headers = auth(("certificates:read", "certificates:admin"))
    for query in ("page=101&page_size=100", "page=101&page_size=1", "page=101", "page=10000"):
        resp = client.get(f"{url}?{query}", headers=headers)
        assert resp.status_code == 422 and resp.json["code"] == "VALIDATION_ERROR", (query, resp.json)
        assert "10,000 rows" in str(resp.json["details"]["fields"]["query"]["page"]), resp.json
    # the deepest page allowed still answers
    for query in ("page=100&page_size=100", "page=100&page_size=1", "page=100"):
        resp = client.get(f"{url}?{query}", headers=headers)
        assert resp.status_code == 200 and resp.json["page"] == 100, (query, resp.json)


def test_the_openapi_parameters_state_the_limit(client):
    spec = client.get("/openapi.json").json
    for path in ("/certificates", "/certificates/{code}/operations", "/certificates/{code}/audit",
                 "/adjustments", "/transfers"):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"] if p["in"] == "query"}
        assert params["page"]["schema"]["maximum"] == 100 and params["page_size"]["schema"]["maximum"] == 100
        for name in ("page", "page_size"):
            assert "no request reads past 10,000 rows" in params[name]["description"], (path, name)
