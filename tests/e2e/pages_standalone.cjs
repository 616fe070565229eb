// Headless Chromium on the pages of a standalone (jwt-mode) hub, driven by
// tests/e2e/test_pages_standalone.py:
//  1. the login form: a wrong password shows the hub's error, the right one logs in;
//  2. the user page: start a session, end it, start one from a saved checkpoint;
//  3. the admin page (as an admin, in a fresh browser profile): the text filter, the
//     status filter and sorting by a column, both ways.
// Prints one JSON line with what it saw; exits non-zero on any failure.
"use strict";
// CommonJS, so NODE_PATH finds playwright-core in .venv/node (ESM imports ignore it).
const { chromium } = require("playwright-core");

(async () => {

const env = process.env;
const log = (msg) => console.error(`[pages_standalone] ${msg}`);
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"];
const seen = { console_errors: [], error_responses: [] };

async function open(profile) {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: env.CHROMIUM, headless: true, args: ARGS,
  });
  const page = await context.newPage();
  // the browser logs every 4xx answer as "Failed to load resource" (without its URL):
  // those are collected with their URLs instead, and checked by the test
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
  return { context, page };
}

async function login(page, email, password) {
  await page.fill("#login-form input[name=email]", email);
  await page.fill("#login-form input[name=password]", password);
  await page.click("#login-form button[type=submit]");
}

const rowIds = async (page) => page.$$eval("#sessions tbody tr", (trs) =>
  trs.map((tr) => tr.dataset.sessionId));
const column = async (page, n) => page.$$eval("#sessions tbody tr", (trs, i) =>
  trs.map((tr) => tr.children[i].textContent.trim()), n);

// --- 1 + 2: the login form and the user page ---------------------------------------------
let user = await open(env.USER_PROFILE);
try {
  const page = user.page;
  await page.goto(env.SERVICE_URL);
  seen.login_heading = await page.textContent("h1");
  await login(page, env.USER_EMAIL, "not the password");
  await page.waitForSelector("#login-error:not([hidden])");
  seen.login_error = await page.textContent("#login-error");
  await login(page, env.USER_EMAIL, env.USER_PASSWORD);
  await page.waitForSelector("#start-session");
  seen.user_heading = await page.textContent("h1");
  seen.user_name_shown = await page.textContent("header .who");
  const before = await rowIds(page);
  log(`logged in; rows before: ${before.length}`);

  await page.click("#start-session");
  await page.waitForFunction((n) => document.querySelectorAll(
    "#sessions tbody tr .status.running").length > n, before.length, { timeout: 60000 });
  const started = (await rowIds(page)).filter((id) => !before.includes(id));
  seen.started = started;
  seen.start_line = await page.textContent("#status-line");
  log(`started ${started}`);

  const row = page.locator(`tr[data-session-id="${started[0]}"]`);
  await row.locator("button", { hasText: "End" }).click();
  await row.waitFor({ state: "detached", timeout: 60000 });
  seen.rows_after_end = await rowIds(page);
  log("ended it");

  const checkpoint = page.locator(`#checkpoints tr[data-checkpoint-id="${env.CHECKPOINT_ID}"]`);
  seen.checkpoint_row = (await checkpoint.innerText()).replace(/\s+/g, " ").trim();
  await checkpoint.locator("button", { hasText: "Start from it" }).click();
  await page.waitForFunction((n) => document.querySelectorAll(
    "#sessions tbody tr .status.running").length > n, seen.rows_after_end.length,
    { timeout: 60000 });
  seen.from_checkpoint = (await rowIds(page)).filter((id) => !seen.rows_after_end.includes(id));
  log(`started ${seen.from_checkpoint} from the checkpoint`);
} finally {
  await user.context.close();
}

// --- 3: the admin page's filter and sort ---------------------------------------------------
const admin = await open(env.ADMIN_PROFILE);
try {
  const page = admin.page;
  await page.goto(env.SERVICE_URL + "admin");
  await login(page, env.ADMIN_EMAIL, env.ADMIN_PASSWORD);
  await page.waitForSelector("#live.on", { timeout: 30000 });
  seen.admin_heading = await page.textContent("h1");
  const expected = Number(env.EXPECTED_ROWS);
  await page.waitForFunction((n) => document.querySelectorAll("#sessions tbody tr").length === n,
    expected, { timeout: 30000 });
  seen.all_rows = await rowIds(page);

  await page.fill("#filter", env.FILTER_TEXT);
  seen.filtered_projects = await column(page, 2);
  seen.filtered_count_label = await page.textContent("#count");
  await page.fill("#filter", "");
  await page.selectOption("#status-filter", "failed");
  seen.failed_rows = await rowIds(page);
  seen.no_rows_hint_hidden = await page.$eval("#no-sessions", (p) => p.hidden);
  await page.selectOption("#status-filter", "running");
  seen.running_rows = await rowIds(page);
  await page.selectOption("#status-filter", "");

  const header = page.locator('th[data-sort="project_name"]');
  await header.click();
  seen.sorted_up = await column(page, 2);
  seen.aria_up = await header.getAttribute("aria-sort");
  await header.click();
  seen.sorted_down = await column(page, 2);
  seen.aria_down = await header.getAttribute("aria-sort");
  const users = page.locator('th[data-sort="user_name"]');
  await users.click();
  seen.users_sorted = await column(page, 0);
  seen.project_aria_after = await header.getAttribute("aria-sort");
  if (env.ARTIFACTS) {
    await page.screenshot({ path: `${env.ARTIFACTS}/admin-standalone-sorted.png`, fullPage: true });
  }
} finally {
  console.log(JSON.stringify(seen));
  await admin.context.close();
}
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
