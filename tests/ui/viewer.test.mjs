// The audit log viewer in Debian's headless Chromium, against the real relay that
// tests/ui.rs started and seeded. Usage: node viewer.test.mjs FIXTURE.json
// (the fixture holds the relay's address, tokens, and what `audit-relay query` answers).
// Prints "ok - NAME" per check and "# all passed" at the end; exits 1 on the first failure.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import fs from "node:fs";

const fx = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const LIST = "/gitpod.v1.AuditLogService/ListAuditLogs";
const STEP = 15_000;

// This machine's network is closed: no background connections, no GPU, no sandbox.
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const watchdog = setTimeout(() => {
  console.log("not ok - the browser tests took longer than 100 s");
  process.exit(1);
}, 100_000);

fs.rmSync(fx.userDataDir, { recursive: true, force: true });
// launchPersistentContext passes this fresh directory as --user-data-dir.
const context = await chromium.launchPersistentContext(fx.userDataDir, {
  executablePath: fx.chromium,
  headless: true,
  args: ARGS,
  acceptDownloads: true,
  downloadsPath: fx.downloads,
  viewport: { width: 1500, height: 1000 },
});
context.setDefaultTimeout(STEP);

const fragment = (extra = {}) =>
  "#" +
  new URLSearchParams({ org: fx.orgA, range: "custom", from: fx.from, to: fx.to, size: "100", ...extra }).toString();

/** A new tab (its own sessionStorage) that records dialogs, requests and page errors. */
async function tab() {
  const page = await context.newPage();
  const seen = { dialogs: [], requests: [], errors: [] };
  page.on("dialog", (d) => {
    seen.dialogs.push(d.message());
    void d.dismiss();
  });
  page.on("request", (r) => seen.requests.push(r.url()));
  page.on("pageerror", (e) => seen.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") seen.errors.push(m.text());
  });
  return { page, seen };
}

async function pagesShown(page) {
  return Number((await page.evaluate(() => document.body.dataset.pages)) ?? "0");
}

/** Waits until the page has shown more than `before` pages of events. */
async function nextPage(page, before) {
  await page.waitForFunction((b) => Number(document.body.dataset.pages ?? "0") > b, before);
}

async function rowIds(page) {
  return page.$$eval("#events tbody tr", (trs) => trs.map((tr) => tr.cells[3].textContent));
}

/** Every page of the current filter, following "Older" until it is disabled. */
async function walk(page) {
  const ids = [];
  const infos = [];
  for (;;) {
    ids.push(...(await rowIds(page)));
    infos.push(await page.textContent("#page-info"));
    if (await page.isDisabled("#older")) break;
    const before = await pagesShown(page);
    await page.click("#older");
    await nextPage(page, before);
  }
  return { ids, infos };
}

async function bodyHasNoEventOf(page, ids) {
  const text = await page.evaluate(() => document.body.innerText);
  for (const id of ids) assert.ok(!text.includes(id), `event ${id} is on the page`);
  assert.equal(await page.locator("#events tbody tr").count(), 0, "no row");
}

async function signIn(page, token) {
  await page.waitForSelector("#signin", { state: "visible" });
  await page.fill("#token", token);
  await page.click("#signin button[type=submit]");
}

const results = [];
async function check(name, f) {
  const t0 = Date.now();
  try {
    await f();
  } catch (e) {
    console.log(`not ok - ${name}\n${e.stack ?? e}`);
    await context.close().catch(() => {});
    process.exit(1);
  }
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
  results.push(name);
}

if (fx.mode === "cap") {
  // More events in 90 days than the histogram reads: it stops and says so.
  await check("over 90 days with more than 100,000 events, the histogram says it covers only the newest", async () => {
    const { page, seen } = await tab();
    await page.goto(`${fx.base}/ui/#org=${fx.orgA}&range=90d`);
    await signIn(page, fx.ownerA);
    const t0 = Date.now();
    await page.waitForSelector("#histogram[data-total]", { state: "attached", timeout: 60_000 });
    console.log(`# the histogram of 100,000 events took ${Date.now() - t0} ms`);
    assert.equal(await page.getAttribute("#histogram", "data-total"), "100000");
    const counts = await page.$$eval("#histogram rect", (rs) => rs.map((r) => Number(r.getAttribute("data-count"))));
    assert.equal(counts.reduce((a, b) => a + b, 0), 100000);
    assert.match(await page.textContent("#hist-summary"), /^The histogram covers only the newest 100,000 events \(back to .+ UTC\); the range holds more\.$/);
    // The aborted export is not an error on the page.
    await nextPage(page, 0);
    assert.equal(await page.textContent("#status"), "");
    assert.ok(seen.errors.every((e) => e.includes("401")), seen.errors.join("\n"));
  });
  await context.close();
  clearTimeout(watchdog);
  console.log(`# all passed (${results.length} checks)`);
  process.exit(0);
}

if (fx.mode === "banner") {
  // A relay answering from the installation store: the page says it shows everything.
  await check("with the installation store, the page says it shows the whole installation", async () => {
    const { page } = await tab();
    await page.goto(`${fx.base}/ui/#org=${fx.orgA}&range=24h`);
    await signIn(page, fx.ownerA);
    await nextPage(page, 0);
    assert.match(await page.textContent("#scope"), /^Whole installation: every relay's events/);
    assert.ok(await page.$eval("#scope", (e) => e.classList.contains("installation")));
  });
  await context.close();
  clearTimeout(watchdog);
  console.log(`# all passed (${results.length} checks)`);
  process.exit(0);
}

await check("no token: the sign-in page, no read at all", async () => {
  const { page, seen } = await tab();
  await page.goto(`${fx.base}/ui/${fragment()}`);
  await page.waitForSelector("#signin", { state: "visible" });
  assert.ok(await page.isHidden("#viewer"));
  await bodyHasNoEventOf(page, fx.all);
  assert.ok(!seen.requests.some((u) => u.includes(LIST) || u.includes("/export")), "no read was sent");
  assert.deepEqual(seen.errors.filter((e) => !e.includes("401")), []);
  await page.close();
});

await check("an expired token: refused, a clear page, no event", async () => {
  const { page } = await tab();
  await page.goto(`${fx.base}/ui/${fragment()}`);
  await signIn(page, fx.expiredA);
  await page.waitForSelector("#denied", { state: "visible" });
  assert.equal(await page.textContent("#denied-title"), "Your token was refused");
  assert.ok(await page.isHidden("#viewer"));
  await bodyHasNoEventOf(page, fx.all);
  await page.close();
});

await check("another organization's owner (token from the cookie): not allowed, no event", async () => {
  await context.addCookies([{ name: fx.cookie, value: fx.ownerB, url: fx.base, httpOnly: true, sameSite: "Strict" }]);
  const { page } = await tab();
  await page.goto(`${fx.base}/ui/${fragment()}`);
  await page.waitForSelector("#denied", { state: "visible" });
  assert.equal(await page.textContent("#denied-title"), "Not allowed");
  await bodyHasNoEventOf(page, fx.all);
  // What the cookie's owner may read is offered: organization B only.
  const options = await page.$$eval("#org option", (os) => os.map((o) => o.value).filter((v) => v));
  assert.deepEqual(options, [fx.orgB]);
  await context.clearCookies();
  await page.close();
});

const { page, seen } = await tab();

await check("an owner's token lists exactly that organization's events, newest first, across three pages", async () => {
  await page.goto(`${fx.base}/ui/${fragment()}`);
  await signIn(page, fx.ownerA);
  await nextPage(page, 0);
  // Only the session call before signing in was refused (401); from here on, no error.
  assert.ok(seen.errors.every((e) => e.includes("401")), seen.errors.join("\n"));
  seen.errors.length = 0;
  assert.match(await page.textContent("#scope"), /One relay's spool only/);
  const { ids, infos } = await walk(page);
  assert.equal(infos.length, 3, `three pages: ${infos.join(" | ")}`);
  assert.deepEqual(ids, fx.all, "the pages are what `audit-relay query` gives, in its order");
  const times = await page.$$eval("#events tbody tr", (trs) => trs.map((tr) => tr.cells[0].textContent));
  assert.deepEqual([...times].sort().reverse(), times, "newest first");
  // Back to page 2 by its token (no offsets), then page 1.
  let before = await pagesShown(page);
  await page.click("#newer");
  await nextPage(page, before);
  assert.deepEqual(await rowIds(page), fx.all.slice(100, 200));
  before = await pagesShown(page);
  await page.click("#newer");
  await nextPage(page, before);
  assert.deepEqual(await rowIds(page), fx.all.slice(0, 100));
  assert.ok(await page.isDisabled("#newer"));
  assert.equal(sessionStorage_ok(await page.evaluate(() => Object.keys(sessionStorage))), true);
});

function sessionStorage_ok(keys) {
  return keys.length === 1 && keys[0] === "audit-relay.token";
}

await check("the histogram's bars add up to the events in the range", async () => {
  await page.waitForSelector("#histogram[data-total]", { state: "attached" });
  const counts = await page.$$eval("#histogram rect", (rs) => rs.map((r) => Number(r.getAttribute("data-count"))));
  const sum = counts.reduce((a, b) => a + b, 0);
  assert.equal(sum, fx.all.length);
  assert.equal(Number(await page.getAttribute("#histogram", "data-total")), fx.all.length);
  assert.ok(counts.length > 20, `bars over five days: ${counts.length}`);
  assert.match(await page.textContent("#hist-summary"), new RegExp(`^${fx.all.length} events in this range`));
  assert.equal(await page.textContent("#hist-title"), "Events per hour");
});

await check("an event with HTML in its action and args is shown as text and runs nothing", async () => {
  assert.equal((await rowIds(page))[0], fx.xss.id, "the hostile event is the newest");
  await page.click("#events tbody tr:first-child");
  await page.waitForSelector("#detail", { state: "visible" });
  assert.equal(await page.textContent("#d-action"), fx.xss.action);
  assert.equal(await page.textContent("#events tbody tr:first-child td:nth-child(2)"), fx.xss.action);
  const args = await page.textContent("#d-args");
  assert.ok(args.includes(`<img src=x onerror=\\"window.__xss=2;alert('args')\\">`), args);
  assert.ok(args.includes("</script><script>window.__xss=3;alert('script')</script>"), args);
  assert.ok(args.startsWith("[\n  "), "pretty-printed");
  assert.equal(await page.locator("img, svg[onload], script:not([src])").count(), 0, "no element made from the event");
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__xss), undefined, "no handler ran");
  assert.deepEqual(seen.dialogs, [], "no dialog opened");
  const x = seen.requests.filter((u) => new URL(u).pathname.endsWith("/x"));
  assert.deepEqual(x, [], "no request for x");
  assert.deepEqual(seen.errors, [], "no page error (a CSP violation is one)");
});

await check("a screenshot of the main view", async () => {
  await page.screenshot({ path: fx.screenshot, fullPage: true });
  console.log(`# screenshot: ${fx.screenshot}`);
});

await check("the NDJSON download equals the export endpoint's answer", async () => {
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const got = fs.readFileSync(await download.path(), "utf8");
  const q = new URLSearchParams({ from: fx.from, to: fx.to });
  const r = await fetch(`${fx.base}/v1/organizations/${fx.orgA}/audit-logs/export?${q}`, {
    headers: { Authorization: `Bearer ${fx.ownerA}` },
  });
  assert.equal(r.status, 200);
  const want = await r.text();
  assert.equal(got, want);
  const ids = got.trim().split("\n").map((l) => JSON.parse(l).id);
  assert.deepEqual(ids, fx.all);
  assert.match(download.suggestedFilename(), /\.ndjson$/);
});

async function filterBy(actor, action) {
  await page.fill("#actor", actor);
  await page.fill("#action", action);
  const before = await pagesShown(page);
  await page.click("#apply");
  await nextPage(page, before);
  return (await walk(page)).ids;
}

await check("the actor and action filters narrow the list to what `audit-relay query` gives", async () => {
  assert.deepEqual(await filterBy(fx.actor.actor, ""), fx.actor.ids, "by actor");
  assert.deepEqual(await filterBy("", fx.action.action), fx.action.ids, "by action");
  assert.deepEqual(await filterBy(fx.both.actor, fx.both.action), fx.both.ids, "by both");
  // The filter is kept in the fragment, so a reload shows the same list.
  await page.reload();
  await nextPage(page, 0);
  assert.deepEqual((await walk(page)).ids, fx.both.ids, "after a reload");
  // The histogram follows the filter.
  await page.waitForSelector("#histogram[data-total]", { state: "attached" });
  assert.equal(Number(await page.getAttribute("#histogram", "data-total")), fx.both.ids.length);
  const suggested = await page.$$eval("#actions option", (os) => os.map((o) => o.value));
  assert.ok(suggested.includes("startWorkspace") && suggested.includes("gitpod.v1.AuditLogService/listAuditLogs"));
});

await check("an installation admin's operator token types the organization", async () => {
  const { page: p } = await tab();
  await p.goto(`${fx.base}/ui/`);
  await signIn(p, fx.admin);
  await p.waitForSelector("#org-input", { state: "visible" });
  assert.equal(await p.textContent("#who"), "signed in as operator:admin");
  await p.fill("#org-input", fx.orgA);
  await p.selectOption("#range", "custom");
  await p.fill("#from", fx.from.slice(0, 19));
  await p.fill("#to", fx.to.slice(0, 19));
  await p.click("#apply");
  await nextPage(p, 0);
  assert.deepEqual((await walk(p)).ids, fx.all);
  await p.close();
});

await context.close();
clearTimeout(watchdog);
console.log(`# all passed (${results.length} checks)`);
