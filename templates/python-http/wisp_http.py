"""The wasi:http plumbing behind app.py: it reads the request's body, calls
`respond`, and writes what it returns. `wit_world` is the module of bindings
componentize-py generates from wit/ at build time."""

from dataclasses import dataclass, field

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# The most bytes one write to an output stream may carry.
WRITE_CHUNK = 4096


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Handler(exports.IncomingHandler):
    def respond(self, method: str, path: str, body: bytes) -> Response:
        raise NotImplementedError

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        if isinstance(method, Method_Other):
            method = method.value
        else:
            method = type(method).__name__.removeprefix("Method_").upper()
        answer = self.respond(method, request.path_with_query() or "/", read_body(request))
        headers = Fields.from_list(
            [(name, value.encode()) for name, value in answer.headers.items()]
        )
        response = OutgoingResponse(headers)
        response.set_status_code(answer.status)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            for start in range(0, len(answer.body), WRITE_CHUNK):
                stream.blocking_write_and_flush(answer.body[start : start + WRITE_CHUNK])
        OutgoingBody.finish(body, None)


def read_body(request: IncomingRequest) -> bytes:
    chunks = []
    with request.consume() as body:
        with body.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(65536))
                except Err as error:
                    if isinstance(error.value, StreamError_Closed):
                        break
                    raise
    return b"".join(chunks)
