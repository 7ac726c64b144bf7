// A long-running HTTP app: wisp starts it with $PORT set and proxies
// requests to it. JSON in, JSON out; Node.js's own http module only.
"use strict";
const http = require("node:http");

http.createServer((request, response) => {
  let body = "";
  request.on("data", (chunk) => { body += chunk; });
  request.on("end", () => {
    let name = "world";
    try {
      const parsed = JSON.parse(body || "{}");
      if (parsed && typeof parsed.name === "string") name = parsed.name;
    } catch {
      response.writeHead(400, { "Content-Type": "application/json" });
      response.end(JSON.stringify({ error: "the body is not JSON" }));
      return;
    }
    response.writeHead(200, { "Content-Type": "application/json" });
    response.end(JSON.stringify({ message: `hello, ${name}` }));
  });
}).listen(Number(process.env.PORT), "127.0.0.1");
