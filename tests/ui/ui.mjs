// Drives wisp's web UI in Debian's Chromium: log in, see the functions, invoke
// one, see its log line and its call tree. Usage: node ui.mjs URL TOKEN SCREENSHOT
import { chromium } from "playwright-core";

const [url, token, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
const problems = [];
page.on("pageerror", (error) => problems.push(error.message));
try {
  await page.goto(`${url}/ui/`);

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
  await page.goto(`${url}/ui/#/function/failing.default`);
  await page.waitForSelector("#invoke");
  await page.click("#invoke");
  await page.waitForSelector("#response-status:text('502')", { timeout: 10000 });
  await page.click("#result a");
  await page.waitForSelector("#tree:has-text('exited with status 3')", { timeout: 10000 });
  await page.waitForSelector("#tree:has-text('stderr: broken on purpose')");

  // The queue page lists async calls.
  await page.goto(`${url}/ui/#/queue`);
  await page.waitForSelector("h1:text('Dead letters')", { timeout: 10000 });

  if (problems.length) throw new Error(`page errors: ${problems.join("; ")}`);
  console.log("ui: ok");
} catch (error) {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`ui: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
