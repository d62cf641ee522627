// Drives Debian's chromium (headless, through playwright-core) against a
// node's live status page while tests/browser.rs runs a storm on it:
// loads /status with the admin key, waits until the rates and charts move,
// follows one group in the live tail, and saves a screenshot. Prints one
// JSON line with what it saw; the Rust test asserts on it.
//
//   node status.mjs BASE_URL ADMIN_KEY GROUP SCREENSHOT_PATH
import { chromium } from "playwright-core";

const [base, key, group, shot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // As root in a container, without a network to reach Google's services.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const out = { console_errors: [], failed_responses: [], requests_elsewhere: [] };
try {
  // Without the key: refused, and the page says so. In a page of its own,
  // closed before the real one opens: the browser may also ask for
  // /favicon.ico for that bare JSON answer (a 404) at any moment after the
  // load, and that error belongs to the refusal, not to the page under test.
  const watchElsewhere = (p) =>
    p.on("request", (r) => {
      const u = new URL(r.url());
      if (u.host !== new URL(base).host) out.requests_elsewhere.push(r.url());
    });
  const probe = await browser.newPage();
  watchElsewhere(probe);
  out.refusal_failed_responses = [];
  probe.on("response", (r) => {
    if (r.status() >= 400) out.refusal_failed_responses.push(`${r.status()} ${r.url()}`);
  });
  const refused = await probe.goto(`${base}/status`);
  out.without_key_status = refused.status();
  out.without_key_text = await probe.textContent("body");
  await probe.close();

  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on("console", (m) => {
    if (m.type() === "error") out.console_errors.push(m.text());
  });
  page.on("pageerror", (e) => out.console_errors.push(String(e)));
  // The console names no URL for a failed load; this list does.
  page.on("response", (r) => {
    if (r.status() >= 400) out.failed_responses.push(`${r.status()} ${r.url()}`);
  });
  watchElsewhere(page);

  await page.goto(`${base}/status?key=${encodeURIComponent(key)}`);
  const number = async (id) => {
    const t = (await page.textContent(`#${id}`)).trim();
    const m = t.match(/^([\d.,]+)([kM]?)$/);
    if (!m) return NaN;
    const n = parseFloat(m[1].replace(/,/g, ""));
    return n * (m[2] === "M" ? 1e6 : m[2] === "k" ? 1e3 : 1);
  };
  // The rates: read twice, a few seconds apart, both non-zero, and the
  // history grows.
  await page.waitForFunction(
    () => {
      const t = document.querySelector("#deliveries-rate").textContent.trim();
      return t !== "–" && t !== "0";
    },
    null,
    { timeout: 60000 }
  );
  out.node = (await page.textContent("#node")).trim();
  out.facts = (await page.textContent("#facts")).trim();
  out.rates_first = { events_in: await number("events-in-rate"), deliveries: await number("deliveries-rate") };
  const chartFirst = await page.evaluate(() => document.querySelector("#chart-out").toDataURL());
  await page.waitForTimeout(2500);
  out.rates_later = { events_in: await number("events-in-rate"), deliveries: await number("deliveries-rate") };
  const chartLater = await page.evaluate(() => document.querySelector("#chart-out").toDataURL());
  out.chart_moved = chartFirst !== chartLater;
  out.connections = await number("connections");

  // The tail: follow the group, see events arrive and keep arriving.
  await page.fill("#tail-group", group);
  await page.click("#tail-start");
  await page.waitForFunction(
    (g) => document.querySelector("#tail-state").textContent === "following " + g,
    group,
    { timeout: 60000 }
  );
  await page.waitForFunction(() => document.querySelectorAll("#tail-lines li").length >= 5, null, {
    timeout: 60000,
  });
  const firstLine = await page.textContent("#tail-lines li:first-child");
  await page.waitForTimeout(1500);
  out.tail_state = await page.textContent("#tail-state");
  out.tail_lines = await page.$$eval("#tail-lines li", (l) => l.length);
  out.tail_count = await number("tail-count");
  out.tail_newest_changed = firstLine !== (await page.textContent("#tail-lines li:first-child"));
  out.tail_sample = JSON.parse(await page.textContent("#tail-lines li:first-child"));
  await page.screenshot({ path: shot, fullPage: true });
  out.screenshot = shot;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
