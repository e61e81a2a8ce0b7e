// Browser test of bangerd's web UI in Debian's headless Chromium, driven by playwright-core.
//
//   node ui.test.mjs URL TOKEN [SCREENSHOT_DIR]
//
// URL and TOKEN come from the daemon's `GET /v1/web` (the Rust harness
// crates/banger-testkit/tests/web_browser.rs starts the daemon and passes them). The daemon is
// expected to have one image and, while this runs, fake console output and CPU ticks for its
// VMs. Exits 0 when every check passed; prints each step.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const [url, token, shots = "screenshots"] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node ui.test.mjs URL TOKEN [SCREENSHOT_DIR]");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const TIMEOUT = 20_000;
const step = (text) => console.log("[ui] " + text);
const bearer = { Authorization: "Bearer " + token };
const vmsNow = async () => (await (await fetch(url + "/v1/vms", { headers: bearer })).json());

async function refusedRequests() {
  step("requests without the token or with a foreign Origin are refused");
  let res = await fetch(url + "/v1/vms");
  assert.equal(res.status, 401, "GET without token");
  res = await fetch(url + "/v1/vms", { headers: { Cookie: "banger_session=" + "0".repeat(64) } });
  assert.equal(res.status, 401, "GET with a wrong cookie");
  res = await fetch(url + "/v1/vms", {
    method: "POST",
    headers: { Cookie: "banger_session=" + token, Origin: "http://evil.example", "Content-Type": "application/json" },
    body: JSON.stringify({ name: "csrf", image: "base" }),
  });
  assert.equal(res.status, 403, "POST with a foreign Origin");
  res = await fetch(url + "/v1/vms", {
    method: "POST",
    headers: { Cookie: "banger_session=" + token, "Content-Type": "application/json" },
    body: JSON.stringify({ name: "csrf", image: "base" }),
  });
  assert.equal(res.status, 403, "POST with the cookie but no Origin");
  assert.equal((await vmsNow()).length, 0, "nothing was created");
}

const profile = mkdtempSync(join(tmpdir(), "banger-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1200, height: 760 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
context.setDefaultTimeout(TIMEOUT);
const page = context.pages()[0] || (await context.newPage());
const consoleErrors = [];
page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
page.on("pageerror", (err) => consoleErrors.push(String(err)));

try {
  await refusedRequests();

  step("without logging in, the browser gets 401 and a hint");
  let res = await page.goto(url + "/");
  assert.equal(res.status(), 401);
  await page.getByText("banger web").first().waitFor();

  step("a cross-origin page cannot use the session (the cookie is SameSite=Strict + Origin check)");
  res = await page.goto(url + "/login?token=" + token);
  assert.equal(new URL(page.url()).pathname, "/");
  assert.equal(res.status(), 200);
  const cookies = await context.cookies(url);
  const session = cookies.find((c) => c.name === "banger_session");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
  // A fetch from the page itself that forges a foreign Origin is impossible; show that our own
  // Origin works and that the page cannot read the cookie.
  assert.equal(await page.evaluate(() => document.cookie), "");

  step("invalid form values show the API's error next to the field; nothing is created");
  await page.goto(url + "/vms/new");
  await page.fill("#f-name", "Bad_Name!");
  await page.click("#create-form button[type=submit]");
  const nameError = page.locator('[data-error-for="name"]');
  await nameError.waitFor({ state: "visible" });
  assert.match(await nameError.innerText(), /\S/);
  assert.equal(await page.getAttribute("#f-name", "aria-invalid"), "true");
  await page.fill("#f-name", "web-demo");
  await page.fill("#f-vcpus", "lots");
  await page.click("#create-form button[type=submit]");
  const vcpusError = page.locator('[data-error-for="vcpus"]');
  await vcpusError.waitFor({ state: "visible" });
  assert.ok(!(await nameError.isVisible()), "the old error is cleared");
  step("  vcpus error: " + (await vcpusError.innerText()));
  await page.fill("#f-vcpus", "0");
  await page.click("#create-form button[type=submit]");
  await vcpusError.waitFor({ state: "visible" });
  step("  vcpus error: " + (await vcpusError.innerText()));
  await page.screenshot({ path: join(shots, "create-invalid.png") });
  // A request the host cannot satisfy names no field: its error shows under the form.
  await page.fill("#f-vcpus", "64");
  await page.click("#create-form button[type=submit]");
  const formError = page.locator('#create-form [data-error-for=""]');
  await formError.waitFor({ state: "visible" });
  step("  form error: " + (await formError.innerText()));
  assert.equal((await vmsNow()).length, 0, "invalid forms created nothing");

  step("create through the form and watch the stages complete");
  await page.fill("#f-vcpus", "1");
  await page.fill("#f-memory_mib", "256");
  await page.fill("#f-disk_size_mib", "512");
  await page.click("#create-form button[type=submit]");
  await page.locator("#progress").waitFor({ state: "visible" });
  await page.locator('#stages li[data-stage="vmm"].running').waitFor();
  await page.screenshot({ path: join(shots, "create-progress.png") });
  await page.locator("#open-vm").waitFor();
  const stages = await page.$$eval("#stages li", (lis) => lis.map((li) => [li.dataset.stage, li.className]));
  step("  stages: " + stages.map(([s, c]) => s + "=" + c).join(" "));
  assert.ok(stages.length >= 5 && stages.every(([, c]) => c === "done"), JSON.stringify(stages));

  step("the VM page shows stats updating and the console following live");
  await page.click("#open-vm");
  await page.waitForURL(/\/vms\/web-demo$/);
  await page.locator("#vm-state", { hasText: "running" }).waitFor();
  const samples = async () => Number((await page.getAttribute("#stats-note", "data-samples")) || 0);
  await page.waitForFunction(() => Number(document.querySelector("#stats-note").dataset.samples || 0) >= 1);
  const before = await samples();
  await page.waitForFunction((n) => Number(document.querySelector("#stats-note").dataset.samples || 0) > n, before);
  step(`  samples ${before} -> ${await samples()}, CPU ${await page.locator('[data-now="cpu"]').innerText()}`);
  await page.waitForFunction(() => (document.querySelector("#chart-cpu polyline")?.getAttribute("points") || "").split(" ").length >= 2);
  await page.waitForFunction(() => Number(document.querySelector("#stats-note").dataset.samples || 0) >= 8);
  assert.ok(await page.isDisabled('[data-action="start"]'), "start is not offered while running");
  await page.locator("#log", { hasText: "fake console line" }).waitFor();
  const firstLog = await page.locator("#log").innerText();
  await page.waitForFunction((len) => document.querySelector("#log").textContent.length > len, firstLog.length);
  step("  console grew while watched");
  await page.screenshot({ path: join(shots, "vm-page.png"), fullPage: true });
  await page.click('[data-log="vmm"]');
  await page.locator("#log", { hasText: "fake vmm log" }).waitFor();
  await page.click('[data-log="console"]');

  step("the VM list shows the VM with a live CPU sparkline");
  await page.goto(url + "/");
  await page.locator('tr:has(a[href="/vms/web-demo"]) [data-field=state]', { hasText: "running" }).waitFor();
  await page.waitForFunction(() => (document.querySelector("svg.spark polyline")?.getAttribute("points") || "").length > 0);
  await page.screenshot({ path: join(shots, "vm-list.png") });

  step("the images page lists images and offers only the forms the API has");
  await page.goto(url + "/images");
  await page.locator("#images tbody tr").first().waitFor();
  await page.waitForFunction(() => !document.body.textContent.includes("Checking the API"));
  const forms = await page.$$eval("[data-image-form]", (cards) =>
    cards.map((c) => c.dataset.imageForm + ":" + (c.querySelector("form") ? "form" : c.textContent.includes("not available yet") ? "n/a" : "?")));
  step("  forms: " + forms.join(" "));
  assert.ok(forms.every((f) => !f.endsWith("?")), JSON.stringify(forms));
  await page.screenshot({ path: join(shots, "images.png"), fullPage: true });

  step("delete the VM from its page");
  await page.goto(url + "/vms/web-demo");
  page.once("dialog", (dialog) => dialog.accept());
  await page.click('[data-action="delete"]');
  await page.waitForURL(url + "/");
  await page.locator("p.empty").waitFor();
  assert.equal((await vmsNow()).length, 0, "the VM is gone");

  // 4xx answers are expected: the 401 before login and the refused invalid forms.
  const unexpected = consoleErrors.filter((e) => !/status of 4\d\d/.test(e));
  assert.deepEqual(unexpected, [], "no script errors: " + JSON.stringify(unexpected));
  step("all checks passed");
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (err) {
  console.error("[ui] FAILED: " + (err && err.stack ? err.stack : err));
  try { await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }); } catch (_) {}
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
