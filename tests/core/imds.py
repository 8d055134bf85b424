"""A fake EC2 instance metadata service on loopback: IMDSv2 session tokens and the spot interruption notice."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOTICE_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_PATH = "/latest/api/token"


class FakeIMDS:
    """``notice``: None (404), a dict (its JSON) or a str (sent as is). ``tokens``: "v2" (PUT gives a token and a
    GET needs one: 401 without), or an HTTP status the PUT answers (403, 404, 405: IMDSv1, no token needed)."""

    def __init__(self, port: int = 0, tokens: str | int = "v2") -> None:
        self.notice: dict | str | None = None
        self.tokens = tokens
        self.issued: set[str] = set()
        self.puts = 0
        self.gets = 0
        self.bad_ttl = 0  # PUTs without a valid TTL header
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                fake.puts += 1
                if self.path != TOKEN_PATH:
                    return self.reply(404)
                if fake.tokens != "v2":
                    return self.reply(int(fake.tokens))
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    fake.bad_ttl += 1
                    return self.reply(400)
                token = secrets.token_hex(8)
                fake.issued.add(token)
                self.reply(200, token.encode())

            def do_GET(self) -> None:
                fake.gets += 1
                if fake.tokens == "v2" and self.headers.get("X-aws-ec2-metadata-token") not in fake.issued:
                    return self.reply(401)
                if self.path != NOTICE_PATH or fake.notice is None:
                    return self.reply(404, b"Not Found")
                body = fake.notice if isinstance(fake.notice, str) else json.dumps(fake.notice)
                self.reply(200, body.encode())

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{NOTICE_PATH}"

    @property
    def token_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{TOKEN_PATH}"

    def __enter__(self) -> FakeIMDS:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
