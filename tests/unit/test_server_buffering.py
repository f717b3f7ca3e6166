"""When the web worker's event loop has a whole request to hand to a thread (api/server.py)."""
from api.server import MAX_HEADER_BYTES, TIMEOUT_ANSWER, complete

LIMIT = 1_048_576


def test_headers_alone_are_not_a_request_until_they_end():
    assert not complete(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMIT)
    assert complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", LIMIT)


def test_a_body_is_waited_for_up_to_its_content_length():
    head = b"POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    assert not complete(head + b"12345", LIMIT)
    assert complete(head + b"1234567890", LIMIT)
    assert complete(b"POST /b HTTP/1.1\r\ncontent-length:  3 \r\n\r\nabc", LIMIT)


def test_what_gunicorn_or_flask_refuse_goes_to_a_thread_at_once():
    assert complete(b"POST /b HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", LIMIT)  # Flask: 413
    assert complete(b"POST /b HTTP/1.1\r\nContent-Length: ten\r\n\r\n", LIMIT)  # gunicorn: 400
    assert complete(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", LIMIT)
    assert complete(b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEADER_BYTES + 1), LIMIT)


def test_the_timeout_answer_is_a_whole_http_response_in_the_error_model():
    head, _, body = TIMEOUT_ANSWER.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and f"Content-Length: {len(body)}".encode() in head
    assert body.startswith(b'{"code":"REQUEST_TIMEOUT"')
