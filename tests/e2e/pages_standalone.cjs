// Headless Chromium on the pages of a standalone (jwt-mode) hub, driven by
// tests/e2e/test_pages_standalone.py:
//  1. the login form: a wrong password shows the hub's error, the right one logs in;
//  2. the user page: start a session with a project name, copy its full id, read and
//     copy the notebook snippet, end it, start one from a saved checkpoint, delete
//     another checkpoint (dismissing the confirmation first, then accepting it);
//  3. the admin page (as an admin, in a fresh browser profile, 900 px wide): every End
//     button in view, the memory plot's scales, the text filter (project, full name),
//     the status filter, sorting by a column both ways, the counters as sessions start
//     and end behind the page's back, End's confirmation (dismissed, then accepted), and
//     the state after the event stream ended with the hub's event log started anew.
// Prints one JSON line with what it saw; exits non-zero on any failure.
"use strict";
// CommonJS, so NODE_PATH finds playwright-core in .venv/node (ESM imports ignore it).
const { chromium } = require("playwright-core");

(async () => {

const env = process.env;
const log = (msg) => console.error(`[pages_standalone] ${msg}`);
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"];
const seen = { console_errors: [], error_responses: [], deletes: [] };

async function open(profile, options) {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: env.CHROMIUM, headless: true, args: ARGS, ...options,
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
  page.on("request", (r) => {
    if (r.method() === "DELETE") seen.deletes.push(new URL(r.url()).pathname);
  });
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
const clipboard = async (page) => page.evaluate(() => navigator.clipboard.readText());
const counters = async (page) => page.evaluate(() => ({
  count: document.getElementById("count").textContent,
  running: document.getElementById("running").textContent,
  capacity: document.getElementById("capacity").textContent,
}));
// answer the next confirm() with accept (true) or dismiss (false); returns its message
function nextDialog(page, accept) {
  return new Promise((resolve) => page.once("dialog", async (d) => {
    const message = d.message();
    await (accept ? d.accept() : d.dismiss());
    resolve(message);
  }));
}

// --- 1 + 2: the login form and the user page ---------------------------------------------
let user = await open(env.USER_PROFILE, {
  permissions: ["clipboard-read", "clipboard-write"],
});
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

  await page.fill("#project-name", env.PROJECT_NAME);
  await page.click("#start-session");
  await page.waitForFunction((n) => document.querySelectorAll(
    "#sessions tbody tr .status.running").length > n, before.length, { timeout: 60000 });
  const started = (await rowIds(page)).filter((id) => !before.includes(id));
  seen.started = started;
  seen.start_line = await page.textContent("#status-line");
  seen.project_field_after = await page.inputValue("#project-name");
  log(`started ${started}`);

  const row = page.locator(`tr[data-session-id="${started[0]}"]`);
  seen.started_project = (await row.locator("td").nth(1).textContent()).trim();
  seen.shown_id = await row.locator(".session-id").textContent();
  await row.locator("button", { hasText: "Copy" }).click();
  seen.copied_id = await clipboard(page);
  seen.snippet_for_started = await page.textContent("#snippet");

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
  // the snippet follows the newest running session; its Copy copies it as shown
  await page.waitForFunction((id) => document.getElementById("snippet").textContent
    .includes(id), seen.from_checkpoint[0]);
  seen.snippet = await page.textContent("#snippet");
  seen.snippet_hint = await page.textContent("#snippet-hint");
  if (env.ARTIFACTS) {
    await page.screenshot({ path: `${env.ARTIFACTS}/user-standalone.png`, fullPage: true });
  }
  await page.click("#copy-snippet");
  seen.copied_snippet = await clipboard(page);

  const doomed = page.locator(`#checkpoints tr[data-checkpoint-id="${env.DELETE_CHECKPOINT_ID}"]`);
  let asked = nextDialog(page, false);
  await doomed.locator("button", { hasText: "Delete" }).click();
  seen.delete_question = await asked;
  seen.kept_after_dismiss = await doomed.count();
  asked = nextDialog(page, true);
  await doomed.locator("button", { hasText: "Delete" }).click();
  await asked;
  await doomed.waitFor({ state: "detached", timeout: 30000 });
  seen.checkpoint_line = await page.textContent("#checkpoint-line");
  seen.checkpoints_left = await page.$$eval("#checkpoints tbody tr", (trs) =>
    trs.map((tr) => tr.dataset.checkpointId));
  log("deleted a checkpoint");
} finally {
  await user.context.close();
}

// --- 3: the admin page's filter and sort ---------------------------------------------------
const admin = await open(env.ADMIN_PROFILE, { viewport: { width: 900, height: 800 } });
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
  seen.counters_loaded = await counters(page);

  // 900 px: every End button within the viewport, and no sideways scrolling
  seen.viewport_width = page.viewportSize().width;
  seen.end_right_edges = await page.$$eval("#sessions tbody td.end button", (bs) =>
    bs.map((b) => b.getBoundingClientRect().right));
  seen.page_width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (env.ARTIFACTS) {
    await page.screenshot({ path: `${env.ARTIFACTS}/admin-standalone-900.png`, fullPage: true });
  }

  // the memory plot's scales, once two samples have come in
  await page.waitForFunction(() => document.querySelector("#sessions svg.spark text"),
    null, { timeout: 30000 });
  seen.spark_labels = await page.$eval("#sessions svg.spark", (svg) =>
    [...svg.querySelectorAll("text")].map((t) => t.textContent));
  seen.memory_title = await page.$eval("#sessions td.memory", (td) => td.title);

  await page.fill("#filter", env.FILTER_TEXT);
  seen.filtered_projects = await column(page, 2);
  seen.filtered_count_label = await page.textContent("#count");
  await page.fill("#filter", env.FULL_NAME_FILTER);
  seen.full_name_rows = await rowIds(page);
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
  // the user cell: the user name, with the full name under it when there is one
  seen.users_sorted = await page.$$eval("#sessions tbody td.user", (tds) =>
    tds.map((td) => [td.firstChild.textContent,
      td.querySelector(".full-name")?.textContent ?? null]));
  seen.project_aria_after = await header.getAttribute("aria-sort");
  if (env.ARTIFACTS) {
    await page.screenshot({ path: `${env.ARTIFACTS}/admin-standalone-sorted.png`, fullPage: true });
  }

  // counters follow sessions started and ended elsewhere (the API, another user)
  const api = async (method, path, body, token = env.OTHER_TOKEN) => {
    const r = await fetch(env.SERVICE_URL + path, {
      method, headers: { Authorization: `Bearer ${token}`,
        "Content-Type": "application/json" }, body: body && JSON.stringify(body),
    });
    const json = await r.json();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
    return json;
  };
  const extra = await api("POST", "dash/start-session", { project_name: "epsilon" });
  const extraRow = page.locator(`tr[data-session-id="${extra.session_id}"]`);
  await extraRow.locator(".status.running").waitFor({ timeout: 30000 });
  seen.counters_after_start = await counters(page);
  await api("POST", `dash/end-session/${extra.session_id}`);
  await extraRow.waitFor({ state: "detached", timeout: 30000 });
  seen.counters_after_end = await counters(page);

  // End asks first: dismissed, the session runs on; accepted, it ends
  const target = page.locator(`tr[data-session-id="${env.END_SESSION_ID}"]`);
  let asked = nextDialog(page, false);
  await target.locator("button", { hasText: "End" }).click();
  seen.end_question = await asked;
  seen.status_after_dismiss = (await target.locator(".status").textContent()).trim();
  asked = nextDialog(page, true);
  await target.locator("button", { hasText: "End" }).click();
  await asked;
  await target.waitFor({ state: "detached", timeout: 30000 });
  seen.counters_after_admin_end = await counters(page);

  // what a hub restart does to the stream: once a session named "gap" exists, the test
  // gives the hub a new event log (ids start again at 1) and ends the old one's streams;
  // sessions started and ended after that are on the new log only. Back on the stream,
  // the page reloads its state and is right (resuming after its old event id, it would
  // hear nothing)
  const lastEventId = async () => (await api("GET", "api/v1/admin/sessions",
    undefined, env.ADMIN_TOKEN)).last_event_id;
  const before = await lastEventId();
  const gap = await api("POST", "dash/start-session", { project_name: "gap" });
  const deadline = Date.now() + 30000;
  while (await lastEventId() >= before) {
    if (Date.now() > deadline) throw new Error("the test did not restart the event log");
    await new Promise((r) => setTimeout(r, 100));
  }
  const zeta = await api("POST", "dash/start-session", { project_name: "zeta" });
  seen.zeta = zeta.session_id;
  await api("POST", `dash/end-session/${gap.session_id}`);
  await page.locator(`tr[data-session-id="${zeta.session_id}"] .status.running`)
    .waitFor({ timeout: 30000 });
  await page.locator(`tr[data-session-id="${gap.session_id}"]`)
    .waitFor({ state: "detached", timeout: 30000 });
  await page.waitForSelector("#live.on", { timeout: 30000 });
  seen.counters_after_gap = await counters(page);
  seen.rows_after_gap = await rowIds(page);
} finally {
  console.log(JSON.stringify(seen));
  await admin.context.close();
}
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
