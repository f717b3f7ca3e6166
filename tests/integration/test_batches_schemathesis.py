"""Schemathesis against /openapi.json for the loader's routes: generated requests to
POST /batches and GET /pool never get a 5xx, and every answer matches its documented schema."""
import dataclasses

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from app import create_app
from config import load_settings
from tests.integration.apikit import auth

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def _spec() -> dict:
    """The OpenAPI document from an app bound to no database (schemathesis' lazy ``from_fixture``
    does not work with this pytest, so the schema is loaded at collection)."""
    spec_app = create_app(dataclasses.replace(load_settings(), database_url=None, redis_url=None,
                                                gcp_env="development"))
    return spec_app.test_client().get("/openapi.json").json


schema = schemathesis.openapi.from_dict(_spec()).include(path_regex=r"^/(batches|pool)$")


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_answers_match_their_schema(case, app):
    # given a generated request from the loader's token; when sent; then no 5xx and the answer
    # conforms to the operation's documentation
    response = case.call_and_validate(headers=auth("batches:write certificates:read"), checks=CHECKS, app=app)
    assert response.status_code < 500  # call_and_validate also raises on any failed check
