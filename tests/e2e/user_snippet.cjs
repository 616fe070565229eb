// Headless Chromium on the user page of a hub in auth mode none (driven by
// tests/e2e/test_pages_standalone.py): start a session with a project name and read
// the notebook snippet the page offers for it, 900 px wide. Prints one JSON line with what it saw;
// exits non-zero on any failure.
"use strict";
// CommonJS, so NODE_PATH finds playwright-core in .venv/node (ESM imports ignore it).
const { chromium } = require("playwright-core");

(async () => {
const env = process.env;
const context = await chromium.launchPersistentContext(env.USER_PROFILE, {
  executablePath: env.CHROMIUM, headless: true, viewport: { width: 900, height: 800 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});
const seen = { console_errors: [], error_responses: [] };
try {
  const page = await context.newPage();
  // 4xx answers are collected with their URLs (the console's line has none)
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
      seen.console_errors.push(m.text());
    }
  });
  page.on("response", (r) => {
    if (r.status() >= 400) {
      seen.error_responses.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
    }
  });
  page.on("pageerror", (e) => seen.console_errors.push(String(e)));
  await page.goto(env.SERVICE_URL);
  seen.notebook_hidden_before = await page.$eval("#notebook", (s) => s.hidden);
  await page.fill("#project-name", env.PROJECT_NAME);
  await page.click("#start-session");
  await page.waitForSelector("#sessions tbody tr .status.running", { timeout: 60000 });
  seen.session_id = await page.$eval("#sessions tbody tr", (tr) => tr.dataset.sessionId);
  await page.waitForSelector("#notebook:not([hidden])");
  seen.snippet = await page.textContent("#snippet");
  seen.hint = await page.textContent("#snippet-hint");
  // 900 px wide: the row's buttons within the window, nothing scrolls sideways
  seen.end_right = await page.$eval("#sessions tbody tr button.danger",
    (b) => b.getBoundingClientRect().right);
  seen.page_width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (env.ARTIFACTS) {
    await page.screenshot({ path: `${env.ARTIFACTS}/user-none-900.png`, fullPage: true });
  }
} finally {
  console.log(JSON.stringify(seen));
  await context.close();
}
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
