// Headless Chromium on the admin page (driven by tests/e2e/test_browser.py).
// Logs in through JupyterHub's form and OAuth, waits for the live stream, starts a
// session as another user through the API, waits for its row to appear without a
// reload, screenshots, ends it with the row's button (accepting its confirmation) and
// waits for the row to go. Then, on the admin's own user page, starts a session and
// reads the notebook snippet the page offers in hub mode, and ends that session.
// Prints one JSON line with what it saw; exits non-zero on any failure.
"use strict";
// CommonJS, so NODE_PATH finds playwright-core in .venv/node (ESM imports ignore it).
const { chromium } = require("playwright-core");

(async () => {

const env = process.env;
const log = (msg) => console.error(`[admin_live] ${msg}`);
const context = await chromium.launchPersistentContext(env.USER_DATA_DIR, {
  executablePath: env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});
const seen = { console_errors: [] };
try {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") seen.console_errors.push(m.text()); });
  page.on("pageerror", (e) => seen.console_errors.push(String(e)));
  await page.goto(env.SERVICE_URL + "admin");
  log(`login page: ${page.url()}`);
  await page.fill("#username_input", env.ADMIN_USER);
  await page.fill("#password_input", env.PASSWORD);
  await Promise.all([page.waitForURL(env.SERVICE_URL + "admin"), page.click("#login_submit")]);
  await page.waitForSelector("#live.on", { timeout: 30000 });
  seen.heading = await page.textContent("h1");
  log("admin page is live; starting a session as another user");

  const r = await fetch(env.SERVICE_URL + "dash/start-session", {
    method: "POST",
    headers: { Authorization: `token ${env.USER_TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ project_name: "live-demo" }),
  });
  const session = await r.json();
  if (!r.ok) throw new Error(`start-session: ${r.status} ${JSON.stringify(session)}`);
  seen.session_id = session.session_id;
  const row = page.locator(`tr[data-session-id="${session.session_id}"]`);
  await row.waitFor({ timeout: 60000 });
  await row.locator(".status.running").waitFor({ timeout: 30000 });
  seen.row = (await row.innerText()).replace(/\s+/g, " ").trim();
  await page.screenshot({ path: `${env.ARTIFACTS}/admin-live.png`, fullPage: true });
  log(`row appeared: ${seen.row}`);

  const asked = new Promise((resolve) => page.once("dialog", async (d) => {
    const message = d.message();
    await d.accept();
    resolve(message);
  }));
  await row.locator("button", { hasText: "End" }).click();
  seen.end_question = await asked;
  await row.waitFor({ state: "detached", timeout: 60000 });
  await page.screenshot({ path: `${env.ARTIFACTS}/admin-ended.png`, fullPage: true });
  seen.ended = true;
  log("row is gone after End");

  await page.goto(env.SERVICE_URL);
  await page.fill("#project-name", "hub-snippet");
  await page.click("#start-session");
  const mine = page.locator("#sessions tbody tr", { has: page.locator(".status.running") });
  await mine.waitFor({ timeout: 120000 });
  seen.own_session_id = await mine.getAttribute("data-session-id");
  await page.waitForSelector("#notebook:not([hidden])");
  seen.snippet = await page.textContent("#snippet");
  const own = page.locator(`tr[data-session-id="${seen.own_session_id}"]`);
  await own.locator("button", { hasText: "End" }).click();
  await own.waitFor({ state: "detached", timeout: 60000 });
  log("read the hub-mode snippet");
} finally {
  console.log(JSON.stringify(seen));
  await context.close();
}
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
