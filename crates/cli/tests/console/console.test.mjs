// The operator console in headless Chromium, run by crates/cli/tests/console.rs against the
// real binary. Each step asserts what a person would see; any failure exits non-zero with the
// step and the reason. Screenshots go to CONSOLE_SCREENSHOTS (docs/console/).
import { chromium } from 'playwright-core';
import axeModule from '@axe-core/playwright';
import http from 'node:http';
import path from 'node:path';
import assert from 'node:assert/strict';

const AxeBuilder = axeModule.default ?? axeModule;
const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env('CONSOLE_BASE');
const KEY = env('CONSOLE_KEY');
const KEY2 = env('CONSOLE_KEY2');
const AGENT = env('CONSOLE_AGENT');
const BATCH_AGENT = env('CONSOLE_BATCH_AGENT');
const SHOTS = env('CONSOLE_SCREENSHOTS');
const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${msg}`);

async function api(method, p, body, key = KEY) {
  const headers = { Authorization: `Bearer ${key}` };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const r = await fetch(BASE + p, { method, headers, body: payload });
  return { status: r.status, json: await r.json().catch(() => null) };
}

async function until(what, fn, ms = 30000, every = 200) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

const cspViolations = [];
function watch(page) {
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
  });
  page.on('pageerror', (e) => cspViolations.push(`page error: ${e.message}`));
}

async function axe(page, name) {
  const result = await new AxeBuilder({ page }).analyze();
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`),
    [],
    `axe-core on ${name}`,
  );
  log(`axe-core on ${name}: no serious or critical violation (${result.violations.length} minor, ${result.passes.length} rules passed)`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

// A webhook receiver that fails until told otherwise.
let healthy = false;
let hits = 0;
const receiver = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    hits += 1;
    res.writeHead(healthy ? 204 : 500);
    res.end();
  });
});
await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;

const browser = await chromium.launch({
  executablePath: env('CONSOLE_CHROMIUM'),
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ],
  // playwright starts Chromium with a fresh, empty --user-data-dir of its own every time.
});

let failed = false;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  watch(page);

  // --- Sign in -------------------------------------------------------------------------
  const first = await page.goto(`${BASE}/console`);
  const csp = first.headers()['content-security-policy'];
  assert.ok(csp && csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'), `CSP: ${csp}`);
  await axe(page, 'sign-in');
  await shot(page, 'sign-in');
  await page.getByLabel('API key').fill('od_aaaaaaaaaaaa_' + 'b'.repeat(40));
  await page.getByRole('button', { name: 'Sign in' }).click();
  assert.equal(await page.locator('#api-key-error').textContent(), 'invalid or missing api key');
  await page.getByLabel('API key').fill(KEY);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${BASE}/console/conversations`);
  const cookies = await ctx.cookies();
  const session = cookies.find((c) => c.name === 'outdial_console');
  assert.ok(session, 'session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  assert.ok(session.expires > Date.now() / 1000, 'the session cookie expires');
  assert.ok(!cookies.some((c) => c.value.includes(KEY)), 'the key is not in a cookie');
  const stored = await page.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }]));
  assert.ok(!stored.includes(KEY), 'the key is not in page storage');
  assert.ok(!(await page.content()).includes(KEY), 'the key is not in the page');
  log('signed in; HttpOnly SameSite=Strict session cookie, key kept nowhere in the page');

  // A failing webhook target on the agent, so its call's event fails and can be retried.
  const target = await api('POST', `/v1/agents/${AGENT}/webhook-targets`, { name: 'crm', url: hookUrl });
  assert.equal(target.status, 200, JSON.stringify(target.json));

  // --- Test call from the agent page, watched live in the list ---------------------------
  await page.goto(`${BASE}/console/agents/${AGENT}`);
  await page.getByLabel('Number to call (E.164, e.g. +919876543210)').fill('+919876543210');
  await page.getByLabel('Customer name (optional, the customer_name parameter)').fill('Rahul');
  await page.getByRole('button', { name: 'Place test call' }).click();
  await page.waitForURL(/\/console\/conversations\/[0-9a-f-]+_1$/);
  const convId = page.url().split('/').pop();
  log(`test call placed: ${convId}`);
  await page.goto(`${BASE}/console/conversations`);
  await page.evaluate(() => { window.__notReloaded = true; });
  const cell = page.locator(`tr[data-conversation="${convId}"] .status`);
  const seen = [];
  await until('the call to complete in the list', async () => {
    const s = (await cell.textContent({ timeout: 5000 }))?.trim();
    if (s && seen[seen.length - 1] !== s) seen.push(s);
    return s === 'completed';
  }, 45000, 150);
  assert.ok(await page.evaluate(() => window.__notReloaded === true), 'the list was not reloaded');
  assert.ok(seen.includes('initiated'), `statuses seen: ${seen.join(' -> ')}`);
  assert.notEqual(seen[0], 'completed', `statuses seen: ${seen.join(' -> ')}`);
  log(`watched without a reload: ${seen.join(' -> ')}`);
  await axe(page, 'conversations');
  await shot(page, 'conversations');

  // --- The conversation, reached with the keyboard; its recording plays ------------------
  await page.locator(`#c-${convId}`).focus();
  await page.keyboard.press('Enter');
  await page.waitForURL(`${BASE}/console/conversations/${convId}`);
  assert.equal(await page.locator('#conversation-status').textContent(), 'completed');
  const firstLine = await page.locator('#transcript li.from-agent p').first().textContent();
  assert.equal(firstLine, 'Hello Rahul, this is Asha from Acme about your invoice.');
  const played = await page.evaluate(async () => {
    const a = document.querySelector('#recording');
    a.muted = true;
    if (a.readyState < 1) await new Promise((r) => a.addEventListener('loadedmetadata', r, { once: true }));
    await a.play();
    await new Promise((r) => setTimeout(r, 600));
    return { duration: a.duration, time: a.currentTime };
  });
  assert.ok(played.duration > 0, `recording duration ${played.duration}`);
  assert.ok(played.time > 0, `recording played to ${played.time} s`);
  log(`recording: ${played.duration.toFixed(2)} s long, played to ${played.time.toFixed(2)} s`);
  await page.evaluate(() => document.querySelector('#recording').pause());

  // Its call.completed event failed twice (schedule "1"); the delivery log offers a retry.
  const failedDelivery = await until('the call.completed delivery to fail', async () => {
    const r = await api('GET', `/v1/webhook-deliveries?conversation_id=${convId}&status=failed`);
    return r.json?.data?.[0];
  }, 20000);
  await page.reload();
  assert.equal(
    await page.locator(`tr[data-delivery="${failedDelivery.webhook_delivery_id}"] .status`).textContent(),
    'failed',
  );
  await axe(page, 'conversation');
  await shot(page, 'conversation');

  // --- Webhooks: retry the failed delivery -----------------------------------------------
  healthy = true;
  const hitsBefore = hits;
  await page.goto(`${BASE}/console/webhooks`);
  const row = page.locator(`tr[data-delivery="${failedDelivery.webhook_delivery_id}"]`);
  assert.equal(await row.locator('.status').textContent(), 'failed');
  assert.ok((await page.content()).includes(hookUrl), 'the target is listed');
  await axe(page, 'webhooks');
  await shot(page, 'webhooks');
  await row.getByRole('button', { name: `Retry delivery ${failedDelivery.webhook_delivery_id}` }).click();
  await page.waitForURL(`${BASE}/console/webhooks`);
  await until('the retried delivery to be delivered', async () => {
    await page.reload();
    return (await page.locator(`tr[data-delivery="${failedDelivery.webhook_delivery_id}"] .status`).textContent()) === 'delivered';
  }, 15000, 500);
  assert.ok(hits > hitsBefore, 'the receiver got the retried event');
  log('failed delivery retried from the log: delivered');

  // --- A 50-row batch: pause, resume, 100 % ----------------------------------------------
  let csv = 'customer_phone,customer_name\n';
  for (let i = 0; i < 50; i++) csv += `+91980000${String(i).padStart(4, '0')},Name ${i}\n`;
  const form = new FormData();
  form.append('agent_id', BATCH_AGENT);
  form.append('name', 'December follow-ups');
  form.append('file', new Blob([csv], { type: 'text/csv' }), 'december.csv');
  const batch = await api('POST', '/v1/batch-call', form);
  assert.equal(batch.status, 200, JSON.stringify(batch.json));
  const batchId = batch.json.data.id;
  await page.goto(`${BASE}/console/batches`);
  await page.getByRole('link', { name: String(batchId), exact: true }).click();
  await page.waitForURL(`${BASE}/console/batches/${batchId}`);
  await page.getByRole('button', { name: 'Pause' }).click();
  await page.waitForURL(`${BASE}/console/batches/${batchId}`);
  assert.equal(await page.locator('#batch-status').textContent(), 'paused');
  await page.evaluate(() => { window.__notReloaded = true; });
  const count = async (label) => Number(await page.locator(`[data-count="${label}"]`).textContent());
  await until('the live calls of the paused batch to end', async () => (await count('in progress')) === 0, 20000);
  const processedWhilePaused = await count('total processed');
  assert.ok(processedWhilePaused < 50, `paused before the end (${processedWhilePaused} processed)`);
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(await count('total processed'), processedWhilePaused, 'nothing dialled while paused');
  assert.equal(await page.locator('#batch-status').textContent(), 'paused');
  log(`paused at ${processedWhilePaused}/50; nothing dialled for 2.5 s`);
  await page.getByRole('button', { name: 'Resume' }).click();
  await page.waitForURL(`${BASE}/console/batches/${batchId}`);
  await page.evaluate(() => { window.__notReloaded = true; });
  await until('the bar to reach 100 %', async () =>
    (await page.locator('#batch-percent').textContent()) === '100 %', 90000, 250);
  assert.ok(await page.evaluate(() => window.__notReloaded === true), 'the bar moved without a reload');
  assert.equal(await page.locator('#batch-bar').getAttribute('value'), '50');
  await until('the batch to read completed', async () =>
    (await page.locator('#batch-status').textContent()) === 'completed', 10000);
  log('resumed; the bar reached 100 % live');
  await axe(page, 'batch');
  await shot(page, 'batch');
  await page.goto(`${BASE}/console/batches`);
  await axe(page, 'batches');
  await shot(page, 'batches');

  // --- Agent form: the API's message next to the field it names -------------------------
  await page.goto(`${BASE}/console/agents`);
  await axe(page, 'agents');
  await shot(page, 'agents');
  await page.goto(`${BASE}/console/agents/${AGENT}`);
  const apiSays = await api('PATCH', `/v1/agents/${AGENT}`, { max_duration_seconds: -5 });
  assert.equal(apiSays.status, 400);
  await page.getByLabel('Maximum duration (seconds)').fill('-5');
  await page.getByRole('button', { name: 'Save agent' }).click();
  const fieldInput = page.getByLabel('Maximum duration (seconds)');
  assert.equal(await fieldInput.getAttribute('aria-invalid'), 'true');
  const describedBy = await fieldInput.getAttribute('aria-describedby');
  assert.equal(await page.locator(`#${describedBy}`).textContent(), apiSays.json.error.message);
  const errorNextToField = await page.locator('#agent-max_duration_seconds + .error, #agent-max_duration_seconds ~ .error').first().textContent();
  assert.equal(errorNextToField, apiSays.json.error.message);
  log(`bad field: "${apiSays.json.error.message}" shown next to "Maximum duration (seconds)"`);
  await axe(page, 'agent');
  await shot(page, 'agent');
  // A save that changes one field changes only that field (the batch agent has an empty
  // first message and a concurrency cap, both kept).
  const batchBefore = (await api('GET', `/v1/agents/${BATCH_AGENT}`)).json.data;
  await page.goto(`${BASE}/console/agents/${BATCH_AGENT}`);
  await page.getByLabel('Name', { exact: true }).fill('batch calls');
  await page.getByRole('button', { name: 'Save agent' }).click();
  await page.waitForURL(`${BASE}/console/agents/${BATCH_AGENT}?saved=1`);
  assert.equal(await page.getByRole('status').textContent(), 'Saved.');
  const batchAfter = (await api('GET', `/v1/agents/${BATCH_AGENT}`)).json.data;
  assert.equal(batchAfter.name, 'batch calls');
  for (const k of new Set([...Object.keys(batchBefore), ...Object.keys(batchAfter)])) {
    if (!['name', 'updated_at'].includes(k)) assert.deepEqual(batchAfter[k], batchBefore[k], `agent field ${k}`);
  }
  // Creating: the API's "required" message by the empty field, then the agent.
  await page.goto(`${BASE}/console/agents/new`);
  await axe(page, 'new agent');
  const noName = await api('POST', '/v1/agents', { phone_number: '+918035739222' });
  assert.equal(noName.status, 400);
  await page.getByLabel('Phone number (one of the tenant\'s numbers)').fill('+918035739222');
  await page.getByRole('button', { name: 'Save agent' }).click();
  assert.equal(await page.locator('#agent-name-error').textContent(), noName.json.error.message);
  await page.getByLabel('Name', { exact: true }).fill('made in the console');
  await page.getByRole('button', { name: 'Save agent' }).click();
  await page.waitForURL(/\/console\/agents\/\d+\?saved=1$/);
  const made = Number(new URL(page.url()).pathname.split('/').pop());
  assert.equal((await api('GET', `/v1/agents/${made}`)).json.data.name, 'made in the console');
  log(`agent saved from the form; a new one created (${made}) after "${noName.json.error.message}" by its name`);

  // --- Keyboard: the skip link and the main navigation -----------------------------------
  await page.goto(`${BASE}/console/conversations`);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Batches');
  await page.keyboard.press('Enter');
  await page.waitForURL(`${BASE}/console/batches`);

  // --- A second tenant sees none of it -----------------------------------------------------
  const ctx2 = await browser.newContext();
  const page2 = await ctx2.newPage();
  watch(page2);
  await page2.goto(`${BASE}/console`);
  await page2.getByLabel('API key').fill(KEY2);
  await page2.getByRole('button', { name: 'Sign in' }).click();
  await page2.waitForURL(`${BASE}/console/conversations`);
  assert.ok(!(await page2.content()).includes(convId), 'not in the second tenant\'s list');
  assert.ok(await page2.getByText('No conversations match.').isVisible());
  for (const [url, message] of [
    [`/console/conversations/${convId}`, 'conversation not found'],
    [`/console/conversations/${convId}/live`, 'conversation not found'],
    [`/console/conversations/${convId}/recording`, 'conversation not found'],
    [`/console/batches/${batchId}`, 'batch not found'],
    [`/console/agents/${AGENT}`, 'agent not found'],
  ]) {
    const r = await page2.goto(BASE + url);
    assert.equal(r.status(), 404, url);
    assert.equal(await page2.locator('#error-message').textContent(), message, url);
  }
  await page2.goto(`${BASE}/console/conversations/${convId}`);
  await axe(page2, 'error page');
  await page2.goto(`${BASE}/console/conversations?batch_id=${batchId}`);
  assert.ok(await page2.getByText('No conversations match.').isVisible(), 'another tenant\'s batch filter finds nothing');
  await page2.goto(`${BASE}/console/webhooks`);
  assert.ok(!(await page2.content()).includes(hookUrl), 'not the first tenant\'s webhook target');
  await page2.goto(`${BASE}/console/batches`);
  assert.ok(await page2.getByText('No batches yet.').isVisible());
  // Its own token cannot act on the first tenant's things either.
  const csrf2 = await page2.locator('input[name="csrf"]').first().getAttribute('value');
  const foreign = await page2.request.post(`${BASE}/console/batches/${batchId}/cancel`, { form: { csrf: csrf2 }, maxRedirects: 0 });
  assert.equal(foreign.status(), 404, 'another tenant\'s batch cannot be cancelled');
  const forged = await page2.request.post(`${BASE}/console/deliveries/${failedDelivery.webhook_delivery_id}/retry`, { form: { csrf: 'wrong' }, maxRedirects: 0 });
  assert.equal(forged.status(), 403, 'a form without the session token is refused');
  log('second tenant: nothing of the first, by list, filter or typed URL');
  await ctx2.close();

  // --- Sign out: the session ends on the server --------------------------------------------
  const before = (await ctx.cookies()).find((c) => c.name === 'outdial_console');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(`${BASE}/console`);
  assert.ok(await page.getByLabel('API key').isVisible());
  await ctx.addCookies([before]);
  await page.goto(`${BASE}/console/conversations`);
  assert.equal(page.url(), `${BASE}/console`, 'the old cookie no longer signs in');
  log('signed out; the old session cookie is refused');

  assert.deepEqual(cspViolations, [], 'no Content-Security-Policy violation or script error');
  log('done');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  receiver.close();
}
process.exit(failed ? 1 : 0);
