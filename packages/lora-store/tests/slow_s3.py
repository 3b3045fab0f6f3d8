"""A tiny S3-compatible server on loopback that can drip bytes: enough of
ListObjectsV2 and GetObject (with If-Match) for boto3. Objects whose key is in
``drip`` are sent ``chunk`` bytes every ``interval`` seconds, so every socket
read returns something and no read timeout ever trips."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


class SlowS3:
    def __init__(self, chunk: int = 64, interval: float = 0.1) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.drip: set[str] = set()
        self.chunk, self.interval = chunk, interval
        self.gets: list[str] = []
        self.drips_ended = 0  # drip responses finished or abandoned by the client
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body, ctype="application/xml", headers=(), length=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                return body

            def do_GET(self):
                url = urlsplit(self.path)
                bucket, _, key = unquote(url.path).lstrip("/").partition("/")
                if not key:
                    self.wfile.write(self._send(200, owner._list(bucket, parse_qs(url.query))))
                    return
                data = owner.objects.get((bucket, key))
                if data is None:
                    self.wfile.write(self._send(404, b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>"))
                    return
                owner.gets.append(key)
                etag = owner.etag(data)
                if self.headers.get("If-Match") not in (None, etag):
                    self.wfile.write(self._send(412, b"<Error><Code>PreconditionFailed</Code>"
                                                     b"<Message>changed</Message></Error>"))
                    return
                self._send(200, b"", "application/octet-stream", [("ETag", etag)], len(data))
                if key not in owner.drip:
                    self.wfile.write(data)
                    return
                try:
                    for i in range(0, len(data), owner.chunk):
                        self.wfile.write(data[i:i + owner.chunk])
                        self.wfile.flush()
                        time.sleep(owner.interval)
                except OSError:
                    pass  # the client gave up
                finally:
                    owner.drips_ended += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def etag(data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'

    def _list(self, bucket: str, query: dict) -> bytes:
        prefix = query.get("prefix", [""])[0]
        items = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f"<ETag>{escape(self.etag(v))}</ETag><Size>{len(v)}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            for (b, k), v in sorted(self.objects.items()) if b == bucket and k.startswith(prefix)
        )
        return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>{bucket}</Name><Prefix>{escape(prefix)}'
                f"</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{items}</ListBucketResult>").encode()

    def __enter__(self) -> SlowS3:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
