"""A long-running HTTP app for wisp's `process-http` kind: it listens on
$PORT, as a 12-factor app does, and keeps a visit count in memory, which a
per-request function could not."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

visits = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without this, Nagle's algorithm
    # holds the body until the client's delayed ACK, 40 ms per response.
    disable_nagle_algorithm = True

    def do_GET(self):
        global visits
        if self.path == "/_/ready":
            return self.answer(200, {"ready": True})
        visits += 1
        self.answer(200, {"path": self.path, "visits": visits, "replica": os.getpid()})

    def answer(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
