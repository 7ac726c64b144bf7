"""A wasi:http handler in Python: JSON in, JSON out."""

import json

from wisp_http import Handler, Response


class IncomingHandler(Handler):
    def respond(self, method: str, path: str, body: bytes) -> Response:
        name = json.loads(body or b"{}").get("name", "world")
        answer = json.dumps({"message": f"hello, {name}"})
        return Response(200, {"content-type": "application/json"}, answer.encode())
