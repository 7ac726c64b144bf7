// Drives wisp's web UI in Debian's Chromium: log in, see the functions, invoke
// one, see its log line and its call tree; see the namespaces, tokens, secrets
// and usage pages; invoke a private function; deploy one from an uploaded
// artifact, call it and remove it; scale an app; then check that a function's page cannot
// get at the token. Usage: node ui.mjs URL UI_URL TOKEN SCREENSHOT PROBE_WASM
import { chromium } from "playwright-core";

const [url, ui, token, screenshot, probeWasm] = process.argv.slice(2);
const uiOrigin = new URL(ui).origin;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (error) => problems.push(error.message));
try {
  // The node's address sends the browser on to the UI's own.
  await page.goto(`${url}/ui/`);
  if (new URL(page.url()).origin !== uiOrigin) throw new Error(`the UI is served at ${page.url()}`);

  // A wrong token is refused with the API's message.
  await page.fill("#token", "not-the-token-at-all");
  await page.click("button[type=submit]");
  await page.waitForSelector("#login-error:text('not valid')", { timeout: 10000 });

  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("tr[data-function=probe]", { timeout: 10000 });
  await page.waitForSelector("tr[data-function=failing]");

  await page.click("tr[data-function=probe] a");
  await page.waitForSelector("#invoke");
  await page.fill("#body", "hello from chromium");
  await page.click("#invoke");
  await page.waitForSelector("#response-status:text('200')", { timeout: 10000 });
  const body = await page.textContent("#response-body");
  if (!body.includes("body=hello from chromium")) throw new Error(`unexpected response: ${body}`);
  const callId = await page.textContent("#result a");
  // wisp's own line for the call arrives in the live log.
  await page.waitForSelector(`#logs .log-wisp:has-text("${callId} [wisp] 200 in")`, { timeout: 10000 });
  await page.screenshot({ path: screenshot, fullPage: true });

  // The call tree of a failing call shows its error.
  await page.goto(`${ui}#/function/failing.default`);
  await page.waitForSelector("#invoke");
  await page.click("#invoke");
  await page.waitForSelector("#response-status:text('502')", { timeout: 10000 });
  await page.click("#result a");
  await page.waitForSelector("#tree:has-text('exited with status 3')", { timeout: 10000 });
  await page.waitForSelector("#tree:has-text('stderr: broken on purpose')");

  // A pipeline's trace is a tree: the pipeline, and each step under it.
  await page.goto(`${ui}#/function/chained.default`);
  await page.waitForSelector("#invoke");
  await page.click("#invoke");
  await page.waitForSelector("#response-status:text('502')", { timeout: 10000 });
  if (!(await page.textContent("#result")).includes("step 2 (failing)")) throw new Error("the failing step is not named");
  await page.click("#result a");
  await page.waitForSelector("#tree > div:has-text('chained.default')", { timeout: 10000 });
  await page.waitForSelector("#tree > div[style*='1.6rem']:has-text('probe.default')");
  await page.waitForSelector("#tree > div[style*='1.6rem']:has-text('failing.default'):has-text('exited with status 3')");

  // The queue page lists async calls.
  await page.goto(`${ui}#/queue`);
  await page.waitForSelector("h1:text('Dead letters')", { timeout: 10000 });

  // Namespaces, tokens, secrets (names only) and usage.
  for (const [view, shown] of [["namespaces", "default"], ["tokens", "Tokens"], ["secrets", "api-key"], ["usage", "probe"]]) {
    await page.goto(`${ui}#/${view}`);
    await page.waitForSelector(`main:has-text("${shown}")`, { timeout: 10000 });
  }
  if ((await page.textContent("main")).includes("s3cret")) throw new Error("a secret's value is shown");

  // A private function answers the logged-in user, with its headers and timing.
  await page.goto(`${ui}#/function/guarded.default`);
  await page.waitForSelector("#invoke");
  await page.click("#invoke");
  await page.waitForSelector("#response-status:text('200')", { timeout: 10000 });
  if (!(await page.textContent("#response-headers")).includes("x-call-id")) throw new Error("no headers shown");

  // Deploy from an uploaded artifact, call it, remove it.
  page.on("dialog", (dialog) => dialog.accept());
  await page.goto(`${ui}#/`);
  await page.waitForSelector("#deploy");
  await page.fill("#deploy-name", "uploaded");
  await page.selectOption("#deploy-kind", "wasm-http");
  await page.setInputFiles("#artifact", probeWasm);
  await page.click("#deploy");
  await page.waitForSelector("tr[data-function=uploaded]", { timeout: 30000 });
  await page.click("tr[data-function=uploaded] a");
  await page.waitForSelector("#facts");
  await page.click("#invoke");
  await page.waitForSelector("#response-status:text('200')", { timeout: 10000 });
  await page.click("#remove");
  await page.waitForSelector("h1:text('Functions')", { timeout: 10000 });
  await page.waitForSelector("tr[data-function=uploaded]", { state: "detached", timeout: 10000 });
  // Scale an app to two replicas and see both ready; a count over the
  // node's bound is refused with the API's message.
  await page.goto(`${ui}#/function/app.default`);
  await page.waitForSelector("#scale");
  await page.fill("#replicas", "2");
  await page.click("#scale");
  for (let ready = false, tries = 0; !ready; tries++) {
    if (tries === 60) throw new Error(`the app did not reach 2 replicas: ${await page.textContent("#facts")}`);
    await page.reload();
    await page.waitForSelector("#facts");
    ready = (await page.textContent("#facts")).includes("2 of 2");
    if (!ready) await page.waitForTimeout(500);
  }
  await page.fill("#replicas", "1000");
  await page.click("#scale");
  await page.waitForSelector("#action-error:has-text('at most')", { timeout: 10000 });
  await page.goto(`${ui}#/`);
  await page.waitForSelector("#deploy");
  // A deploy the node refuses says why.
  await page.fill("#deploy-name", "Not A Name");
  await page.click("#deploy");
  await page.waitForSelector("#deploy-error:not(:empty)", { timeout: 10000 });

  // Still logged in, the user opens a function's page served by the node:
  // whatever it tries, it does not get the token.
  const thief = await context.newPage();
  thief.on("pageerror", (error) => problems.push(`thief: ${error.message}`));
  await thief.goto(`${url}/function/thief?ui=${encodeURIComponent(ui)}`);
  await thief.waitForSelector("body[data-done]", { timeout: 30000 });
  const loot = await thief.textContent("#loot");
  if (!loot.includes("canary-seen")) throw new Error(`the thief did not run: ${loot}`);
  if (loot.includes(token)) throw new Error(`a function page read the token: ${loot}`);
  // The same page fetched through the UI's address (as the invoke form does)
  // runs no script there.
  await thief.goto(`${uiOrigin}/function/thief`);
  await thief.waitForLoadState("load");
  const ran = await thief.textContent("#loot");
  if (ran !== "") throw new Error(`a function page ran on the UI's origin: ${ran}`);
  await thief.close();
  // And the UI still works.
  await page.goto(`${ui}#/`);
  await page.waitForSelector("tr[data-function=probe]", { timeout: 10000 });

  if (problems.length) throw new Error(`page errors: ${problems.join("; ")}`);
  console.log("ui: ok");
} catch (error) {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`ui: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
