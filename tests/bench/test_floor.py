"""The Python floor reference (bench/floor.py), started as the runner starts it and asked over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx

from bench import floor, references
from bench.process import free_port


def test_floor_answers_each_request_from_its_file_and_404_otherwise(tmp_path: Path) -> None:
    answers = tmp_path / "answers.msgpack"
    count = floor.write_answers(
        answers, [(b"/MEIwQDA%2BMA", b"\x30\x03\x0a\x01\x00"), (b"\x30\x05body", b"\x30\x03\x0a\x01\x06")] * 2
    )
    assert count == 2  # duplicates fold
    port = free_port()
    proc = references.start_floor(tmp_path, answers, port, None)
    try:
        proc.wait_until(lambda: _answers(port), 30)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            get = client.get("/MEIwQDA%2BMA")
            post = client.post("/", content=b"\x30\x05body")
            missing = client.get("/other")
            again = client.get("/MEIwQDA%2BMA")  # the same keep-alive connection
    finally:
        proc.stop()
    assert (get.status_code, get.content) == (200, b"\x30\x03\x0a\x01\x00")
    assert get.headers["content-type"] == "application/ocsp-response"
    assert int(get.headers["content-length"]) == 5
    assert (post.status_code, post.content) == (200, b"\x30\x03\x0a\x01\x06")
    assert missing.status_code == 404
    assert again.content == get.content


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/other", timeout=1).status_code == 404
    except httpx.TransportError:
        return False
