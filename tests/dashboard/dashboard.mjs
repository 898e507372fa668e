// The dashboard in a real browser (Debian's Chromium, driven by the npm
// package playwright-core): it asks for the key, shows live data, and its
// numbers match GET /api/v1/status at the same applied index. Prints one
// JSON object; exits 1 with the reason when something is off.
//
//   NODEPOOL_NPM_DIR=<dir> node dashboard.mjs BASE_URL KEY SCREENSHOT.png [PID]
//
// PID: the oracle's process, stopped (SIGSTOP) for a while at the end: its
// event stream goes silent without closing, as a half-open connection does,
// and the page must notice, say so, and follow the stream again once the
// oracle goes on (SIGCONT).
// KEY "-": an oracle without keys (loopback): the page asks for none.
import { createRequire } from "node:module";

const require = createRequire(process.env.NODEPOOL_NPM_DIR + "/");
const { chromium } = require("playwright-core");

const [base, key, screenshot, oraclePid] = process.argv.slice(2);
const out = {};
let browser;
const fail = async (why) => {
  console.log(JSON.stringify({ ...out, error: why }));
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
};

const keyed = key !== "-";
const api = async (path, init = {}) => {
  const r = await fetch(base + path, {
    ...init,
    headers: { ...(keyed ? { Authorization: `Bearer ${key}` } : {}),
               ...(init.headers || {}) },
  });
  return { status: r.status, body: await r.json() };
};

// Waits until `f` returns a truthy value (polled), or fails with `what`.
const until = async (what, f, ms = 30000) => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) await fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
};

try {
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const external = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(base)) external.push(r.url());
  });
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(base + "/");
  if (!keyed) {
    await page.waitForSelector("body[data-ready='1']", { timeout: 30000 });
    out.asked_for_key = await page.$eval("#login", (e) => e.offsetParent !== null);
    if (out.asked_for_key) await fail("asked for a key the oracle does not need");
  } else {
  // No key yet: the page asks for one. A wrong key is refused.
  await page.waitForSelector("#login", { state: "visible", timeout: 15000 });
  await page.fill("#api-key", "np_not_a_key");
  await page.click("#login-submit");
  await until("the wrong key's error", () =>
    page.$eval("#login-error", (e) => e.textContent.trim().length > 0));
  out.wrong_key_refused = true;
  await page.fill("#api-key", key);
  await page.click("#login-submit");
  await page.waitForSelector("body[data-ready='1']", { timeout: 30000 });
  out.stored_key = await page.evaluate(() =>
    sessionStorage.getItem("nodepool_api_key") !== null);
  if (!out.stored_key) await fail("the key is not in session storage");

  // Reloading keeps the key (no second prompt).
  await page.reload();
  await page.waitForSelector("body[data-ready='1']", { timeout: 30000 });
  out.login_after_reload = await page.$eval("#login", (e) =>
    e.offsetParent !== null);
  if (out.login_after_reload) await fail("asked for the key again after a reload");
  }

  // A session opened over the API shows up, with its nodes, and live
  // events arrive over the stream.
  const created = await api("/api/v1/sessions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: "llama-3-8b", min_nodes: 1, max_nodes: 1,
                           redundancy: 1, max_tasks: 5,
                           client_reference: "dashboard-test" }),
  });
  if (created.status !== 201) await fail(`POST /api/v1/sessions: ${created.status}`);
  const sid = created.body.session_id;
  out.session_row = await until("the session's row with its node", () =>
    page.evaluate((id) => {
      const row = document.querySelector(`#sessions tr[data-session-id="${id}"]`);
      return row && /\S/.test(row.children[3]?.textContent || "")
        ? row.textContent : null;
    }, sid));
  await until("live events", () =>
    page.evaluate(() => Number(document.body.dataset.events || 0) > 0));
  out.events_received = await page.evaluate(() => Number(document.body.dataset.events));
  out.event_items = await page.$$eval("#events li", (l) => l.length);

  // The tiles match /api/v1/status read at the index the page shows.
  const tiles = ["registered", "testing", "ephemeral", "reserved",
                 "revalidating", "quarantined", "retired", "lost"];
  let last = {};
  await until("tiles equal to /api/v1/status at one index", async () => {
    const s = (await api("/api/v1/status")).body;
    const shown = await page.evaluate((ids) => {
      const v = (id) => Number(document.getElementById(id).textContent);
      const o = { index: Number(document.body.dataset.appliedIndex) };
      for (const id of ids) o[id] = v(id);
      return o;
    }, [...tiles.map((t) => "nodes-" + t), "nodes-total", "queue-depth",
        "sessions-active", "sessions-completed", "sessions-failed",
        "tests-passed", "tests-failed"]);
    const want = { index: s.applied_index, "nodes-total": s.nodes.total,
                   "queue-depth": s.queue_depth,
                   "sessions-active": s.sessions.active,
                   "sessions-completed": s.sessions.completed,
                   "sessions-failed": s.sessions.failed,
                   "tests-passed": s.tests.passed,
                   "tests-failed": s.tests.failed };
    for (const t of tiles) want["nodes-" + t] = s.nodes.by_state[t];
    last = { shown, want };
    return Object.keys(want).every((k) => shown[k] === want[k]);
  });
  out.matched = last.want;

  // The node kept out is listed with why; every miner has a row.
  const miners = (await api("/api/v1/miners")).body.miners;
  out.miner_rows = await until("a row per miner", async () => {
    const n = await page.$$eval("#miners tr[data-node-id]", (l) => l.length);
    return n === miners.length ? n : 0;
  });
  // Each miner's latency as the table shows it: "—" while not measured (0).
  out.latency = await page.evaluate((ms) => ms.map((m) => {
    const tr = document.querySelector(`#miners tr[data-node-id="${m.node_id}"]`);
    return [m.latency_ms, tr ? tr.cells[4].textContent : null];
  }), miners);
  // When the leader last heard from each: "Ns ago", or "—" when not connected.
  out.seen = await page.evaluate((ms) => ms.map((m) => {
    const tr = document.querySelector(`#miners tr[data-node-id="${m.node_id}"]`);
    return [m.last_seen ?? 0, tr ? tr.cells[10].textContent : null];
  }), miners);
  const kept = miners.filter((m) => m.state === "quarantined" || m.state === "retired");
  if (kept.length > 0) {
    out.kept_reason = kept[0].reason || "";
    out.kept_out = await until("the kept-out list with the node's reason", () =>
      page.evaluate(([id, why]) => {
        const li = document.querySelector(`#kept-out [data-node-id="${id}"]`);
        return li && li.textContent.includes(why) ? li.textContent : null;
      }, [kept[0].node_id, out.kept_reason]));
  }
  out.members = await page.$eval("#members", (e) => e.textContent.trim());
  // A cluster's members as the page marks them: [id, leads?].
  out.member_items = await page.$$eval("#members [data-member-id]", (l) =>
    l.map((e) => [Number(e.dataset.memberId), e.dataset.leader === "1"]));

  // End the session: it leaves the table.
  const ended = await api(`/api/v1/admin/sessions/${sid}/end`, { method: "POST" });
  out.end_status = ended.status;
  if (ended.status !== 200) await fail(`ending the session: ${ended.status}`);
  out.row_gone = await until("the ended session's row to go", () =>
    page.evaluate((id) =>
      !document.querySelector(`#sessions tr[data-session-id="${id}"]`), sid));

  await page.screenshot({ path: screenshot, fullPage: true });
  out.screenshot = screenshot;

  // Asked to wait (429 with Retry-After: 5), the page waits that long
  // before it asks again, not its usual 2 s.
  const asked = [];
  await page.route(/\/api\/v1\/miners(\?|$)/, async (route) => {
    asked.push(Date.now());
    if (asked.length > 1) return route.continue();
    return route.fulfill({
      status: 429, contentType: "application/json", headers: { "Retry-After": "5" },
      body: JSON.stringify({ error: { code: "rate_limited", message: "slow down" } }),
    });
  });
  await until("the miners asked for again after the 429", () => asked.length >= 2, 20000);
  await page.unroute(/\/api\/v1\/miners(\?|$)/);
  out.retry_after_waited_ms = asked[1] - asked[0];

  // A page of the pool at a time (?rows=2): the first two miners in id
  // order (the API's whole list), then the next two; every poll asks the
  // oracle for two, never for the whole pool.
  if (miners.length >= 3) {
    const ids = miners.map((m) => m.node_id);
    const queries = [];
    page.on("request", (r) => {
      const u = new URL(r.url());
      if (u.pathname === "/api/v1/miners") queries.push(u.search);
    });
    await page.goto(base + "/?rows=2");
    await page.waitForSelector("body[data-ready='1']", { timeout: 30000 });
    const rows = () => page.$$eval("#miners tr[data-node-id]", (l) => l.map((e) => e.dataset.nodeId));
    out.all_ids = ids;
    out.page1 = await until("the first page of miners", async () => {
      const r = await rows();
      return r.length === 2 && r[0] === ids[0] ? r : null;
    });
    out.page1_count = await page.$eval("#miners-count", (e) => e.textContent);
    await page.click("#miners-next");
    out.page2 = await until("the second page of miners", async () => {
      const r = await rows();
      return r.length > 0 && r[0] === ids[2] ? r : null;
    });
    out.page2_count = await page.$eval("#miners-count", (e) => e.textContent);
    out.miner_queries = [...new Set(queries)];
  }

  if (oraclePid) {
    const state = () => page.evaluate(() => document.getElementById("stream-state").dataset.state);
    out.live_before_stop = await until("the stream to be live", async () => (await state()) === "live");
    const pid = Number(oraclePid);
    process.kill(pid, "SIGSTOP");
    const stopped = Date.now();
    try {
      // Not `until`: it exits on a timeout, and the oracle must go on first.
      while (Date.now() - stopped < 20000) {
        const s = await state();
        if (s !== "live") {
          out.silent_state = s;
          out.silent_after_ms = Date.now() - stopped;
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      out.silent_error = await page.$eval("#error", (e) => e.textContent);
    } finally {
      process.kill(pid, "SIGCONT");
    }
    out.live_again = await until("the stream to be live again",
                                 async () => (await state()) === "live", 30000);
  }
  out.external_requests = external;
  out.page_errors = consoleErrors;
  if (external.length > 0) await fail("the page fetched from elsewhere");
  if (consoleErrors.length > 0) await fail("the page threw");
  await browser.close();
  console.log(JSON.stringify(out));
} catch (e) {
  await fail(String(e && e.stack || e));
}
