// End-to-end test of the web chat: Debian's Chromium, headless, driven by playwright-core,
// against a real `sluice serve` on a small model (SmolLM2-135M-Instruct).
//
// Needs SLUICE_BIN (the sluice binary) and SLUICE_TEST_MODELS (laid out like
// ../shared/models); tests/e2e/run.sh sets both up. Screenshots go to artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const HERE = path.dirname(new URL(import.meta.url).pathname);
const ARTIFACTS = path.join(HERE, "artifacts");
const BIN = process.env.SLUICE_BIN;
const MODELS = process.env.SLUICE_TEST_MODELS;
const MODEL = MODELS && path.join(MODELS, "smollm2-135m-instruct-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SKIP =
  !BIN || !MODELS
    ? "SLUICE_BIN or SLUICE_TEST_MODELS is not set (tests/e2e/run.sh sets them)"
    : !fs.existsSync(BIN)
      ? `no sluice binary at ${BIN}`
      : !fs.existsSync(MODEL)
        ? `no model at ${MODEL}`
        : !fs.existsSync(CHROMIUM)
          ? `no Chromium at ${CHROMIUM} (apt-get install chromium)`
          : false;
if (SKIP) console.log(`note: skipping the browser test: ${SKIP}`);

// Generation on a shared 2-core CI machine can be slow: wait generously.
const LONG = 180_000;

/** Starts `sluice serve` on a free port; resolves once it listens. */
async function startServer(extraArgs = []) {
  const args = ["serve", "--model", MODEL, "--port", "0", "--max-model-len", "2048", ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, SLUICE_LOG: "warn" } });
  let log = "";
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sluice serve did not start in 120 s:\n${log}`)), 120_000);
    proc.stderr.on("data", (d) => {
      log += d;
      const m = log.match(/http:\/\/(127\.0\.0\.1|localhost|\[::1\]):(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(`http://127.0.0.1:${m[2]}/`);
      }
    });
    proc.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`sluice serve exited (${signal ?? code}):\n${log}`));
    });
  });
  return {
    url,
    log: () => log,
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.once("exit", () => resolve());
        proc.kill("SIGKILL");
      }),
  };
}

let browser;
before(async () => {
  if (SKIP) return;
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Debian's Chromium as root, on a machine without outside network.
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
});
after(async () => {
  await browser?.close();
});

async function newPage(url, viewport = { width: 1100, height: 820 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // Console errors other than the HTTP failures the test causes on purpose (a CSP
  // violation, for one, would show here).
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  return { page, context, problems };
}

const assistants = (page) => page.locator("article.msg.assistant");
const lastAssistant = (page) => assistants(page).last();

/** Types a message and presses Enter. */
async function send(page, text) {
  await page.locator("#input").fill(text);
  await page.locator("#input").press("Enter");
}

/** Waits until the reply being written is done (Send is back, the reply is not busy). */
async function waitIdle(page, timeout = LONG) {
  await page.locator("#send").waitFor({ state: "visible", timeout });
  await page.waitForFunction(() => !document.querySelector('article[aria-busy="true"]'), null, { timeout });
}

async function setSettings(page, values) {
  await page.getByRole("button", { name: "Settings" }).click();
  const dialog = page.locator("#settings");
  await dialog.waitFor({ state: "visible" });
  for (const [label, value] of Object.entries(values)) {
    await dialog.getByLabel(label, { exact: true }).fill(String(value));
  }
  await dialog.getByRole("button", { name: "Done" }).click();
  await dialog.waitFor({ state: "hidden" });
}

/** Records the reply's text length on every change while it is busy (proves streaming). */
async function watchStreaming(page) {
  await page.evaluate(() => {
    window.__seen = [];
    const obs = new MutationObserver(() => {
      const el = document.querySelector('article.msg.assistant[aria-busy="true"] .body');
      if (el) window.__seen.push(el.textContent.length);
    });
    obs.observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true, attributes: true });
  });
}

function storedConversation(page) {
  return page.evaluate(() => {
    const id = localStorage.getItem("sluice.current");
    return JSON.parse(localStorage.getItem("sluice.conversations")).find((c) => c.id === id);
  });
}

test("chat: stream, history, stop, reload, errors", { skip: SKIP, timeout: 900_000 }, async () => {
  const server = await startServer();
  try {
    const { page, problems } = await newPage(server.url);
    await page.locator("#model-name").filter({ hasText: "Model:" }).waitFor({ timeout: 30_000 });

    // Greedy, so the test is repeatable.
    await setSettings(page, { Temperature: 0, "Max tokens": 160, Seed: 7 });
    await page.locator("#system-box summary").click();
    await page.getByLabel("System prompt", { exact: true }).fill("You are a helpful assistant.");

    // Turn 1: a streamed reply appears piece by piece and finishes with its figures.
    await watchStreaming(page);
    await send(page, "Give me three tips for learning Rust, as a list.");
    await page.locator("#stop").waitFor({ state: "visible" });
    await waitIdle(page);
    const seen = await page.evaluate(() => window.__seen);
    const first = await lastAssistant(page).locator(".body").textContent();
    assert.ok(first.trim().length > 0, "the first reply is empty");
    const partial = seen.filter((n) => n > 0 && n < first.length);
    assert.ok(partial.length > 0, `no partial text was shown while streaming (lengths seen: ${seen.join(",")})`);
    const stats1 = await lastAssistant(page).locator(".stats").textContent();
    assert.match(stats1, /first token \d/, stats1);
    assert.match(stats1, /\d+ tokens\b/, stats1);
    assert.match(stats1, /prompt \d+ tokens/, stats1);
    // Markdown in the reply is rendered, not shown as source.
    const conv1 = await storedConversation(page);
    if (/^\s*(\d+\.|[-*]) /m.test(conv1.messages[1].content)) {
      assert.ok((await lastAssistant(page).locator(".body li").count()) > 0, "a list in the reply was not rendered");
    }

    // Turn 2: the request carries the system prompt and the history.
    const [req] = await Promise.all([
      page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions") && r.method() === "POST"),
      send(page, "Write a Python function that reverses a string. Use a markdown code block."),
    ]);
    const body = req.postDataJSON();
    assert.equal(body.stream, true);
    assert.deepEqual(body.stream_options, { include_usage: true });
    assert.equal(body.temperature, 0);
    assert.equal(body.max_tokens, 160);
    assert.equal(body.seed, 7);
    assert.deepEqual(
      body.messages.map((m) => m.role),
      ["system", "user", "assistant", "user"]
    );
    assert.equal(body.messages[0].content, "You are a helpful assistant.");
    assert.equal(body.messages[1].content, "Give me three tips for learning Rust, as a list.");
    assert.equal(body.messages[2].content, conv1.messages[1].content);
    assert.ok(body.messages[2].content.length > 0);
    await waitIdle(page);
    assert.equal(await assistants(page).count(), 2);
    assert.ok(
      (await lastAssistant(page).locator(".body").textContent()).trim().length > 0,
      `the second reply is empty; error shown: ${await lastAssistant(page).locator(".error").textContent()}`
    );
    const conv2 = await storedConversation(page);
    if (conv2.messages[3].content.includes("```")) {
      assert.ok((await lastAssistant(page).locator(".code-block code").count()) > 0, "a code block was not rendered");
    }
    await page.screenshot({ path: path.join(ARTIFACTS, "chat.png") });

    // Turn 3: stop a long reply mid-stream; the partial reply stays, marked as stopped.
    await setSettings(page, { "Max tokens": 400 });
    await send(page, "Tell me a long story about a dragon who learns to bake bread.");
    await page.waitForFunction(
      () => (document.querySelector('article[aria-busy="true"] .body')?.textContent.length ?? 0) > 10,
      null,
      { timeout: LONG }
    );
    await page.locator("#stop").click();
    await waitIdle(page, 30_000);
    const stats3 = await lastAssistant(page).locator(".stats").textContent();
    assert.match(stats3, /stopped/, stats3);
    const conv3 = await storedConversation(page);
    const stopped = conv3.messages[5];
    assert.equal(stopped.role, "assistant");
    assert.ok(stopped.stopped && stopped.content.length > 0, JSON.stringify(stopped));
    assert.ok(stopped.stats.tokens < 400, JSON.stringify(stopped.stats));

    // Reload: the conversation is still there, with its system prompt.
    await page.reload();
    await page.locator("#model-name").filter({ hasText: "Model:" }).waitFor({ timeout: 30_000 });
    assert.equal(await page.locator("article.msg").count(), 6);
    assert.equal(
      await page.locator("article.msg.user").first().locator(".body").textContent(),
      "Give me three tips for learning Rust, as a list."
    );
    assert.equal(await assistants(page).first().locator(".body").textContent(), first);
    assert.equal(await page.getByLabel("System prompt", { exact: true }).inputValue(), "You are a helpful assistant.");
    assert.equal(await page.locator("#conv-list li").count(), 1);
    assert.match(await page.locator("#conv-list li").first().textContent(), /Give me three tips/);

    // A new conversation starts empty; the old one is a click away in the list.
    await page.getByRole("button", { name: "New conversation" }).click();
    assert.equal(await page.locator("article.msg").count(), 0);
    assert.equal(await page.locator("#conv-list li").count(), 2);
    await page.locator("#conv-list button.open", { hasText: "Give me three tips" }).click();
    assert.equal(await page.locator("article.msg").count(), 6);

    // Edit and resend the first message: later turns go, a new reply comes.
    await setSettings(page, { "Max tokens": 24 });
    await page.locator("article.msg.user").first().getByRole("button", { name: "Edit and resend this message" }).click();
    await page.getByLabel("Edit message").fill("What is the capital of Italy?");
    await page.getByRole("button", { name: "Send the edited message" }).click();
    await waitIdle(page);
    assert.equal(await page.locator("article.msg").count(), 2);
    assert.equal(await page.locator("article.msg.user .body").textContent(), "What is the capital of Italy?");

    // A phone-width screen: one column, the list behind a button.
    await page.setViewportSize({ width: 390, height: 800 });
    assert.equal(await page.locator("#sidebar").isVisible(), false);
    await page.getByRole("button", { name: "Show conversations" }).click();
    await page.locator("#sidebar").waitFor({ state: "visible" });
    await page.keyboard.press("Escape");
    await page.locator("#sidebar").waitFor({ state: "hidden" });
    await page.screenshot({ path: path.join(ARTIFACTS, "chat-phone.png") });
    await page.setViewportSize({ width: 1100, height: 820 });

    // A message far longer than the context: the server's 400 is shown, readable.
    await send(page, "tell me about this: " + "lorem ipsum dolor sit amet ".repeat(800));
    await waitIdle(page);
    const tooLong = await lastAssistant(page).locator(".error").textContent();
    assert.match(tooLong, /Too long for the model \((400|413)\)/, tooLong);

    // Server down: the page says so instead of waiting forever.
    await server.stop();
    await send(page, "Are you there?");
    await waitIdle(page, 30_000);
    const down = await lastAssistant(page).locator(".error").textContent();
    assert.match(down, /Server unreachable/, down);
    await page.screenshot({ path: path.join(ARTIFACTS, "chat-errors.png") });
    assert.deepEqual(problems, []);
  } catch (e) {
    e.message += `\n--- sluice serve log ---\n${server.log()}`;
    throw e;
  } finally {
    await server.stop();
  }
});

test("chat: API key prompt and a busy server (429)", { skip: SKIP, timeout: 600_000 }, async () => {
  const key = "e2e-secret-key";
  const server = await startServer(["--api-key", key, "--max-pending", "1"]);
  try {
    const { page, problems } = await newPage(server.url);
    // The model list needs the key: the page asks for it.
    const dialog = page.locator("#key-dialog");
    await dialog.waitFor({ state: "visible", timeout: 30_000 });
    await dialog.getByLabel("API key", { exact: true }).fill(key);
    await dialog.getByRole("button", { name: "Use this key" }).click();
    await page.locator("#model-name").filter({ hasText: "Model:" }).waitFor({ timeout: 30_000 });
    await setSettings(page, { Temperature: 0, "Max tokens": 16 });

    // Another client holds the only slot: the page shows the 429 and its message.
    const hold = new AbortController();
    const held = await fetch(new URL("v1/chat/completions", server.url), {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
      body: JSON.stringify({
        messages: [{ role: "user", content: "Tell me a very long story." }],
        max_tokens: 1000,
        stream: true,
      }),
      signal: hold.signal,
    });
    assert.equal(held.status, 200);
    await send(page, "Hello!");
    await waitIdle(page, 30_000);
    const busy = await lastAssistant(page).locator(".error").textContent();
    assert.match(busy, /The server is busy \(429\)/, busy);

    // Once the slot is free, Regenerate gets a reply (with the stored key).
    hold.abort();
    let ok = false;
    for (let i = 0; i < 20 && !ok; i++) {
      await page.waitForTimeout(500);
      await lastAssistant(page).getByRole("button", { name: "Regenerate this reply" }).click();
      await waitIdle(page);
      ok = (await lastAssistant(page).locator(".error").isHidden()) && (await lastAssistant(page).locator(".body").textContent()).trim().length > 0;
    }
    assert.ok(ok, "no reply after the busy slot was freed");
    assert.equal(await page.evaluate(() => localStorage.getItem("sluice.apiKey")), key);
    assert.deepEqual(problems, []);
  } catch (e) {
    e.message += `\n--- sluice serve log ---\n${server.log()}`;
    throw e;
  } finally {
    await server.stop();
  }
});
