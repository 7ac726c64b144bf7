"""The request body on STDIN, the response on STDOUT: one process per
request. JSON in, JSON out; the standard library only."""

import json
import sys

try:
    request = json.load(sys.stdin)
except json.JSONDecodeError:
    request = {}
name = request.get("name", "world") if isinstance(request, dict) else "world"
json.dump({"message": f"hello, {name}"}, sys.stdout)
