"""``GET /asyncapi.json``: the Kafka side's AsyncAPI 3.0 document (``api.asyncapi_doc``), and
``GET /asyncapi``: the same, rendered as one HTML page on the server, with no script and no asset
from elsewhere (offline, like ``/docs``). Open, like the OpenAPI document, and not in it."""
from __future__ import annotations

import json
import re
from html import escape

from flask import Blueprint, Response

from api.asyncapi_doc import document
from config import get_settings

blp = Blueprint("asyncapi", __name__)

_STYLE = """body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:2px solid #ccc;padding-top:1rem}h3{margin-bottom:.3rem}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.85rem}code{background:#f0f0f0;padding:0 .2rem}
details{margin:.4rem 0}.op{color:#fff;padding:.1rem .4rem;border-radius:.2rem;font-size:.8rem}
.receive{background:#2b7a3d}.send{background:#1f5fa8}"""


def _text(value) -> str:
    """Escaped text, its `code spans` (CommonMark's, as AsyncAPI descriptions use) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(str(value or ""), quote=False))


def _resolve(doc: dict, node: dict) -> dict:
    """Follow a local ``$ref`` (``#/a/b``) once."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not ref:
        return node
    target = doc
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return target


def _pre(value) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _headers_table(schema: dict) -> str:
    required = set(schema.get("required", ()))
    rows = "".join(f"<tr><td><code>{_text(name)}</code>{' (required)' if name in required else ''}</td>"
                   f"<td>{_text(prop.get('const') or ', '.join(map(str, prop.get('enum', [])[:6])) or prop.get('type'))}"
                   f"{' ...' if len(prop.get('enum', [])) > 6 else ''}</td><td>{_text(prop.get('description'))}</td></tr>"
                   for name, prop in schema.get("properties", {}).items())
    return f"<table><tr><th>header</th><th>value</th><th>meaning</th></tr>{rows}</table>"


def render(doc: dict) -> str:
    """The document as one self-contained HTML page."""
    info = doc["info"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_text(info['title'])}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{_text(info['title'])} <small>{_text(info['version'])}"
             f"</small></h1><p>{_text(info.get('description'))}</p><p>AsyncAPI {_text(doc['asyncapi'])}: "
             "<a href='/asyncapi.json'>/asyncapi.json</a> (machine-readable). The HTTP side: "
             "<a href='/docs'>/docs</a>, <a href='/openapi.json'>/openapi.json</a>.</p><h2>Servers</h2><table>"
             "<tr><th>server</th><th>protocol</th><th>how to connect</th></tr>"]
    for name, server in doc["servers"].items():
        parts.append(f"<tr><td>{_text(name)}<br><code>{_text(server['host'])}</code></td>"
                     f"<td>{_text(server['protocol'])}</td><td><b>{_text(server.get('title'))}</b>: "
                     f"{_text(server.get('description'))}</td></tr>")
    parts.append("</table><h2>Security schemes</h2><ul>")
    for name, scheme in doc["components"]["securitySchemes"].items():
        parts.append(f"<li><code>{_text(name)}</code> ({_text(scheme['type'])}): {_text(scheme.get('description'))}</li>")
    parts.append("</ul><h2>Operations</h2>")
    for op_id, operation in doc["operations"].items():
        channel = _resolve(doc, operation["channel"])
        parts.append(f"<h3><span class='op {operation['action']}'>{_text(operation['action'])}</span> "
                     f"<code>{_text(channel['address'])}</code> <small>{_text(op_id)}</small></h3>"
                     f"<p>{_text(operation.get('description'))}</p><p>{_text(channel.get('description'))}</p>")
        group = operation.get("bindings", {}).get("kafka", {}).get("groupId")
        if group:
            parts.append(f"<p>Consumer group: <code>{_text(', '.join(group.get('enum', [])))}</code></p>")
        for ref in operation["messages"]:
            message = _resolve(doc, _resolve(doc, ref))
            key = message.get("bindings", {}).get("kafka", {}).get("key", {})
            parts.append(f"<p><b>Message {_text(message['name'])}</b>: {_text(message.get('summary'))}<br>"
                         f"Key: {_text(key.get('description'))}</p>")
            if message.get("headers"):
                parts.append("<p>Headers:</p>" + _headers_table(message["headers"]))
            parts.append("<details><summary>Payload schema</summary>"
                         f"{_pre(_resolve(doc, message['payload']))}</details>")
            for example in message.get("examples", ()):
                parts.append(f"<details><summary>Example {_text(example.get('name'))}: "
                             f"{_text(example.get('summary'))}</summary>"
                             + (_pre(example["headers"]) if example.get("headers") else "")
                             + f"{_pre(example['payload'])}</details>")
    parts.append("<h2>Shared schemas</h2>")
    for name in ("money", "code"):
        if name in doc["components"]["schemas"]:
            parts.append(f"<h3><code>{name}</code></h3>{_pre(doc['components']['schemas'][name])}")
    parts.append("</body></html>")
    return "".join(parts)


def _current() -> str:
    settings = get_settings()
    return document(settings.cloudevents_source, settings.consumer_group)


@blp.get("/asyncapi.json")
def asyncapi_json():
    return Response(_current(), content_type="application/json")


@blp.get("/asyncapi")
def asyncapi_page():
    return Response(render(json.loads(_current())), content_type="text/html; charset=utf-8")
