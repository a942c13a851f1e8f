// The try-it page and the console as a person uses them, in Debian's
// Chromium driven by playwright-core. The Rust integration tests start the
// node and call this script with one JSON argument:
//
//   { "scenario": "try" | "console", "base": "http://127.0.0.1:PORT",
//     "artifacts": DIR, "samples": DIR,               (try)
//     "token": OPERATOR_TOKEN, "key": TENANT_KEY,     (console)
//     "tenant": ID, "deployment": NAME, "module": ID,
//     "from": VERSION, "to": VERSION }
//
// It fails (exit 1, with the reason) on any check that does not hold, on
// any request the page makes to anywhere but the node, and on any error in
// the page's console. It saves a screenshot of each screen, 1280 and 360
// pixels wide, under `artifacts`.

import { createRequire } from "node:module";
import path from "node:path";
import fs from "node:fs";

const require = createRequire(path.join(process.env.MANTLE_NODE_MODULES || "", "..", "package.json"));
const { chromium } = require("playwright-core");

const options = JSON.parse(process.argv[2] || "{}");
const origin = new URL(options.base).origin;
const WIDTHS = [1280, 360];
const WAIT = { timeout: 60_000 };

class Failed extends Error {}

function check(condition, message) {
  if (!condition) throw new Failed(message);
}

const offOrigin = [];
const pageErrors = [];
/** While a step sends a wrong key or token on purpose, the browser's own
 * report of the 401 it gets is what the step expects, not an error. */
let refusalExpected = false;
const REFUSAL_LOGGED = "Failed to load resource: the server responded with a status of 401 (Unauthorized)";

/** Runs `step`, which makes the node answer 401, then waits for the
 * browser's report of it to arrive before errors count again. */
async function refused(page, step) {
  refusalExpected = true;
  try {
    return await step();
  } finally {
    await page.waitForTimeout(500);
    refusalExpected = false;
  }
}

/** Fills the field labelled `label` with a wrong `value` and presses
 * `button`; returns the message the page shows in `shownIn` for the
 * node's 401. */
async function refusal(page, { label, value, button, shownIn }) {
  await page.getByLabel(label).fill(value);
  const message = page.locator(shownIn);
  await refused(page, async () => {
    await page.getByRole("button", { name: button }).click();
    await message.waitFor(WAIT);
  });
  return (await message.textContent()).trim();
}

async function newPage(browser, width) {
  const context = await browser.newContext({ viewport: { width, height: 900 }, deviceScaleFactor: 1 });
  context.on("request", (request) => {
    const url = request.url();
    if (url.startsWith("blob:") || url.startsWith("data:")) return;
    if (new URL(url).origin !== origin) offOrigin.push(url);
  });
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    if (refusalExpected && message.text() === REFUSAL_LOGGED) return;
    pageErrors.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => pageErrors.push(`uncaught: ${error.message}`));
  return { context, page };
}

async function screenshot(page, name) {
  fs.mkdirSync(options.artifacts, { recursive: true });
  const file = path.join(options.artifacts, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`saved ${file}`);
}

/** The off-diagonal cell of the similarity matrix at row i, column j. */
async function similarity(card, i, j) {
  const text = await card.locator("table tbody tr").nth(i).locator("td").nth(j).textContent();
  return Number(text);
}

async function tryPage(browser) {
  for (const width of WIDTHS) {
    const { context, page } = await newPage(browser, width);
    await page.goto(`${options.base}/`);
    await page.getByText("open to requests without a key").waitFor(WAIT);

    // A photo of a cat: "tiger cat" first.
    const image = page.locator('article[data-module="image-classify"]');
    await image.getByLabel("Choose or drop a photo").setInputFiles(path.join(options.samples, "chelsea.png"));
    await image.locator("ol.bars li").first().waitFor(WAIT);
    const first = (await image.locator("ol.bars li .name").first().textContent()).trim();
    check(first === "tiger cat", `image-classify put "${first}" first, not "tiger cat"`);
    check((await image.locator("ol.bars li").count()) === 5, "image-classify did not show five classes");
    check(/request id \w+/.test(await image.locator(".meta").textContent()), "image-classify showed no request id");

    // Two sentences about a cat on a mat are closer than either is to revenue.
    const text = page.locator('article[data-module="text-embed"]');
    await text
      .getByLabel("Sentences, one per line")
      .fill("A cat sits on the mat\nA kitten rests on a rug\nQuarterly revenue grew");
    await text.getByRole("button", { name: "Compare" }).click();
    await text.locator("table").waitFor(WAIT);
    const catKitten = await similarity(text, 0, 1);
    const catRevenue = await similarity(text, 0, 2);
    const kittenRevenue = await similarity(text, 1, 2);
    check(
      catKitten > catRevenue && catKitten > kittenRevenue,
      `text-embed: cat/kitten ${catKitten}, cat/revenue ${catRevenue}, kitten/revenue ${kittenRevenue}`,
    );
    check((await text.locator(".meta li").count()) === 3, "text-embed did not show each request's id and latency");

    // A recording with three stretches of speech.
    const speech = page.locator('article[data-module="speech-detect"]');
    await speech.getByLabel("Choose or drop a WAV recording").setInputFiles(path.join(options.samples, "speech.wav"));
    await speech.locator(".segment-count").waitFor(WAIT);
    const count = (await speech.locator(".segment-count").textContent()).trim();
    check(count === "3 speech segments", `speech-detect showed "${count}"`);
    check((await speech.locator("ol.segments li").count()) === 3, "speech-detect did not list three segments");
    await speech.locator("canvas.wave").waitFor(WAIT);

    await screenshot(page, `try-${width}`);

    // A wrong key: the node's own 401 message.
    await page.getByRole("button", { name: "Use another key" }).click();
    const shown = await refusal(page, {
      label: "Tenant API key",
      value: "not-a-key-of-this-node",
      button: "Use this key",
      shownIn: "#access-error .error",
    });
    check(shown === "401: the API key is not valid", `a wrong key showed "${shown}"`);
    await screenshot(page, `try-wrong-key-${width}`);
    await context.close();
  }
}

async function consolePage(browser) {
  const route = `/t/${options.tenant}/${options.module}`;
  const module = `article[data-module="${options.module}"]`;

  /** What the module answers now, asked from the try-it page with the tenant's key. */
  async function answer(page) {
    // Without a key yet, the page's first question is refused.
    await refused(page, async () => {
      await page.goto(`${options.base}/`);
      await page.locator("#who").filter({ hasNotText: "Asking the node" }).waitFor(WAIT);
    });
    if (await page.getByLabel("Tenant API key").isHidden()) {
      await page.getByRole("button", { name: "Use another key" }).click();
    }
    await page.getByLabel("Tenant API key").fill(options.key);
    await page.getByRole("button", { name: "Use this key" }).click();
    const card = page.locator(module);
    await card.waitFor(WAIT);
    check((await card.textContent()).includes(route), `the try-it page does not show ${route}`);
    await card.getByRole("button", { name: "Send" }).click();
    await card.locator("pre.body").waitFor(WAIT);
    return (await card.locator("pre.body").textContent()).trim();
  }

  const { context, page } = await newPage(browser, WIDTHS[0]);
  const before = await answer(page);
  check(before.includes(`version ${options.from}`), `before the roll-back the module answered ${before}`);

  await page.goto(`${options.base}/console`);
  // A wrong token first: the node's own words.
  const shown = await refusal(page, {
    label: "Operator token",
    value: "not-the-operator-token",
    button: "Sign in",
    shownIn: "#login-error .error",
  });
  check(shown === "401: the operator token is not valid", `a wrong token showed "${shown}"`);

  await page.getByLabel("Operator token").fill(options.token);
  await page.getByRole("button", { name: "Sign in" }).click();
  const row = page.locator(`[data-tenant="${options.tenant}"] tr[data-deployment="${options.deployment}"]`);
  await row.waitFor(WAIT);
  check((await row.locator(".tag.active").textContent()).includes(options.from), `${options.from} is not shown active`);

  // Cancel first: nothing changes.
  const activate = row.getByRole("button", { name: `Activate version ${options.to} of ${options.deployment}` });
  await activate.click();
  await page.getByRole("dialog").getByRole("button", { name: "Cancel" }).click();
  check((await row.locator(".tag.active").textContent()).includes(options.from), "a cancelled activation changed the version");

  await activate.click();
  await page.getByRole("dialog").getByRole("button", { name: "Activate" }).click();
  await page.getByText(`now serves version ${options.to}`).waitFor(WAIT);
  // The list is read again after the message: wait for it to show the
  // new version, then check it does.
  const active = page.locator(`[data-tenant="${options.tenant}"] tr[data-deployment="${options.deployment}"] .tag.active`);
  await active.filter({ hasText: options.to }).waitFor(WAIT).catch(() => {});
  check((await active.textContent()).includes(options.to), `${options.to} is not shown active after activating it`);

  const after = await answer(page);
  check(after.includes(`version ${options.to}`), `after the roll-back the module answered ${after}`);

  // The module's traffic appears among the charts.
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: 900 });
    await page.goto(`${options.base}/console`);
    await page.locator(`[data-tenant="${options.tenant}"]`).waitFor(WAIT);
    const figure = page.locator(`figure[data-route="${options.tenant}/${options.module}"]`);
    await figure.waitFor(WAIT);
    // Traffic while the console watches: its chart shows a rate above 0.
    for (let i = 0; i < 20; i++) {
      const sent = await fetch(`${options.base}${route}`, { method: "POST", headers: { Authorization: `Bearer ${options.key}` } });
      check(sent.ok, `a request to ${route} answered ${sent.status}`);
      await sent.arrayBuffer();
    }
    await figure.filter({ hasText: /(?!0\.0 )\d+\.\d req\/s · p99 \d+ ms/ }).waitFor(WAIT);
    const facts = await page.locator("#node-facts").textContent();
    check(facts.includes("resident memory") && facts.includes("models loaded"), `the node panel shows ${facts}`);
    await screenshot(page, `console-${width}`);
  }
  await context.close();
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
  ],
});
let failure = null;
try {
  if (options.scenario === "try") await tryPage(browser);
  else if (options.scenario === "console") await consolePage(browser);
  else throw new Failed(`no scenario ${options.scenario}`);
} catch (error) {
  failure = error;
} finally {
  await browser.close();
}
if (offOrigin.length) console.error(`requests that left the node:\n  ${offOrigin.join("\n  ")}`);
if (pageErrors.length) console.error(`errors in the page:\n  ${pageErrors.join("\n  ")}`);
if (failure) console.error(failure instanceof Failed ? `failed: ${failure.message}` : failure);
if (failure || offOrigin.length || pageErrors.length) process.exit(1);
console.log(`${options.scenario}: every check held`);
