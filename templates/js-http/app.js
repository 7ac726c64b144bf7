// A wasi:http handler in JavaScript: JSON in, JSON out. The engine
// (StarlingMonkey) hands each request to this listener, as a service
// worker gets it.
addEventListener("fetch", (event) => event.respondWith(respond(event.request)));

async function respond(request) {
  const text = await request.text();
  const { name = "world" } = text ? JSON.parse(text) : {};
  return Response.json({ message: `hello, ${name}` });
}
