// Herald's dashboard: plain JavaScript on the JSON API and the batch event stream.
// The API key lives in this tab's sessionStorage only and goes in the `authorization`
// header; the event stream is read with fetch() so that it carries the header too
// (EventSource cannot send one, and a key in a URL would land in logs).
"use strict";

const KEY_ITEM = "herald.apiKey";
const FINAL = new Set(["completed", "completed_partial", "failed", "cancelled"]);
// The phases whose event stream has something to say (progress, the next phase).
const SENDING = new Set(["validating", "dispatching", "in_progress", "in_progress_chunked"]);
// Browsers open about six connections per host, shared by every tab of the page; each
// stream holds one. Two windows side by side then hold four, and leave two for requests;
// a tab out of sight holds none (`onVisibility`).
const MAX_STREAMS = 2;
const LIST_REFRESH_MS = 5000;
const DETAIL_REFRESH_MS = 2000;
const LAST_EVENT_MS = 5000;
const PAGE = 50;
const ACTIONS = ["pause", "resume", "cancel", "retry"];

const $ = (id) => document.getElementById(id);

// What the page knows of the signed-in key's account; a new one at each sign-out.
function newState() {
  return {
    batches: new Map(), // batch_id -> summary from the list
    progress: new Map(), // batch_id -> {sent, failed, done, total} from its event stream
    ledger: new Map(), // batch_id -> the same from its ledger counts (the batch shown)
    streams: new Map(), // batch_id -> AbortController of its open event stream
    eventIds: new Map(), // batch_id -> where its next stream goes on from (`Last-Event-ID`)
    selected: null,
    // The batch whose detail was read since it was clicked, and whether an action of it is
    // under way: until the one and while the other, no action is offered.
    detailOf: null,
    acting: false,
    errorsCursor: null,
    // The rejected rows counted when the batch shown's were read: read again when it changes.
    errorsRejected: null,
    listTimer: null,
    detailTimer: null,
    detailLoadedAt: 0,
  };
}

let state = newState();
// The number of the newest request of rejected rows, across sign-ins: older answers drop.
let errorsRequest = 0;

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

// The answer to a request made with a key no longer signed in (forgotten, or another key
// signed in since): dropped, for it is another account's.
class StaleAnswer extends Error {}

function apiKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

function authHeaders() {
  return { authorization: `Bearer ${apiKey()}` };
}

async function api(path, { method = "GET", json, form } = {}) {
  const key = apiKey();
  const headers = authHeaders();
  let body;
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(path, { method, headers, body, cache: "no-store" });
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (apiKey() !== key) throw new StaleAnswer(path);
  if (!response.ok) {
    const error = payload && payload.errors && payload.errors[0];
    if (response.status === 401) {
      signOut("The API key was refused: enter it again.");
      throw new StaleAnswer(path);
    }
    throw new ApiError(
      response.status,
      error ? error.error : `HTTP_${response.status}`,
      error ? error.message : response.statusText,
    );
  }
  return payload.data;
}

function notify(text, isError = false) {
  const notice = $("notice");
  notice.textContent = text;
  notice.classList.toggle("error", isError);
  delete notice.dataset.refresh;
}

function messageOf(error) {
  return error instanceof ApiError ? error.message : String(error);
}

function failed(error) {
  if (error instanceof StaleAnswer) return;
  notify(messageOf(error), true);
}

// A failure of the list's periodic refresh: said until a refresh succeeds again (a 502 or a
// dropped connection once stayed in red for the rest of the session), unlike what an
// action said, which stays until the next action.
function refreshFailed(error) {
  failed(error);
  if (!(error instanceof StaleAnswer)) $("notice").dataset.refresh = "";
}

async function refreshBatches() {
  await loadBatches();
  if ("refresh" in $("notice").dataset) notify("");
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function statusBadge(element, status) {
  element.textContent = status;
  element.className = `status ${status}`;
}

// Ledger statuses of rows not yet done.
const WAITING = new Set(["pending", "sending", "waiting_for_window"]);

// What a batch has done: from its ledger counts when it is the one shown (they move with
// each send), else from its event stream (the workflow's totals, which move per chunk).
function progressOf(batch) {
  const live =
    (batch.batch_id === state.selected && state.ledger.get(batch.batch_id)) ||
    state.progress.get(batch.batch_id);
  const final = FINAL.has(batch.status);
  if (live) {
    const total = live.total || batch.recipients || 0;
    return {
      // A batch that ended with nothing to send (refused at validation, cancelled before)
      // is done: a bar without a value would show it at work.
      value: total ? live.done / total : final ? 1 : null,
      text: `${live.sent} sent, ${live.failed} failed of ${total}`,
    };
  }
  if (final) return { value: 1, text: `${batch.recipients ?? 0} recipients` };
  return { value: null, text: batch.recipients === null ? "" : `${batch.recipients} recipients` };
}

function ledgerProgress(detail) {
  const counts = detail.counts;
  let done = 0;
  for (const [status, count] of Object.entries(counts)) {
    if (status !== "rejected" && !WAITING.has(status)) done += count;
  }
  return {
    sent: (counts.sent ?? 0) + (counts.delivered ?? 0),
    failed: (counts.failed ?? 0) + (counts.undelivered ?? 0),
    done,
    total: detail.recipients ?? 0,
  };
}

function setProgress(bar, fraction) {
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = Math.min(1, fraction);
}

// --- the list --------------------------------------------------------------------------

// The batch's row, updated; made only for the list (`create`), so that a batch the list no
// longer shows does not come back at its end with an event of its stream.
function renderRow(batch, create = false) {
  let row = document.querySelector(`tr[data-batch-id="${CSS.escape(batch.batch_id)}"]`);
  if (!row && !create) return null;
  if (!row) {
    row = document.createElement("tr");
    row.dataset.batchId = batch.batch_id;
    const name = cell(row, "", "name");
    const title = document.createElement("strong");
    const id = document.createElement("div");
    id.className = "progress-text";
    name.append(title, id);
    cell(row, "", "status-cell").appendChild(document.createElement("span"));
    const progressCell = cell(row, "", "progress-cell");
    const bar = document.createElement("progress");
    bar.max = 1;
    const text = document.createElement("span");
    text.className = "progress-text";
    progressCell.append(bar, text);
    cell(row, "", "created");
    row.addEventListener("click", () => select(batch.batch_id));
    // Reached and opened from the keyboard too.
    row.tabIndex = 0;
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(batch.batch_id);
      }
    });
  }
  row.querySelector(".name strong").textContent = batch.name || batch.agent_number;
  row.querySelector(".name div").textContent = batch.batch_id;
  statusBadge(row.querySelector(".status-cell span"), batch.status);
  const progress = progressOf(batch);
  setProgress(row.querySelector("progress"), progress.value);
  row.querySelector(".progress-cell .progress-text").textContent = progress.text;
  row.querySelector(".created").textContent = new Date(batch.created_at).toLocaleString();
  row.classList.toggle("selected", batch.batch_id === state.selected);
  return row;
}

async function loadBatches() {
  const data = await api(`/v1/sms/batches?limit=${PAGE}`);
  const seen = new Set();
  const rows = $("batch-rows");
  for (const [at, batch] of data.batches.entries()) {
    seen.add(batch.batch_id);
    state.batches.set(batch.batch_id, { ...(state.batches.get(batch.batch_id) || {}), ...batch });
    // Ended with no stream to say so (the tab out of sight, its stream given to another): the
    // progress its last event told is not where it ended.
    if (FINAL.has(batch.status) && !state.progress.get(batch.batch_id)?.final) {
      state.progress.delete(batch.batch_id);
    }
    // In the list's order, newest first. A row moves only when it is out of its place: a
    // row moved loses the keyboard's focus.
    const row = renderRow(state.batches.get(batch.batch_id), true);
    if (rows.children[at] !== row) rows.insertBefore(row, rows.children[at] ?? null);
  }
  for (const row of [...rows.children]) {
    if (!seen.has(row.dataset.batchId)) row.remove();
  }
  // A batch no longer listed is no longer followed, but for the one shown.
  for (const batchId of [...state.batches.keys()]) {
    if (seen.has(batchId) || batchId === state.selected) continue;
    state.batches.delete(batchId);
    state.progress.delete(batchId);
    state.ledger.delete(batchId);
    state.eventIds.delete(batchId);
    state.streams.get(batchId)?.abort();
  }
  $("no-batches").hidden = data.batches.length > 0;
  // The batch shown moved on with no stream to say so (it was paused, then cancelled): its
  // detail is read again, as its stream's event would have had it.
  const shown = state.batches.get(state.selected);
  if (shown && seen.has(shown.batch_id) && $("detail-status").textContent !== shown.status) {
    loadDetail().catch(failed);
  }
  followRunning();
}

// Live progress: one event stream per sending batch shown (the selected one first: it takes
// a slot from another), while the tab is in sight. A batch queued, waiting for its time or
// paused says nothing until it sends again, and its stream ends only at its final event: it
// held a slot for good, and the batch sending got none. The list's refresh sees it move on.
function followRunning() {
  if (document.visibilityState === "hidden") return;
  for (const [batchId, controller] of state.streams) {
    if (!SENDING.has(state.batches.get(batchId)?.status)) {
      state.streams.delete(batchId);
      controller.abort();
    }
  }
  const sending = [...state.batches.values()].filter((b) => SENDING.has(b.status));
  sending.sort((a, b) => (b.batch_id === state.selected) - (a.batch_id === state.selected));
  for (const batch of sending) {
    if (state.streams.has(batch.batch_id)) continue;
    if (state.streams.size >= MAX_STREAMS) {
      const other = [...state.streams.keys()].find((id) => id !== state.selected);
      if (batch.batch_id !== state.selected || other === undefined) break;
      state.streams.get(other).abort();
      state.streams.delete(other);
    }
    follow(batch.batch_id);
  }
}

async function follow(batchId) {
  const controller = new AbortController();
  state.streams.set(batchId, controller);
  const headers = { ...authHeaders(), accept: "text/event-stream" };
  // A retried batch's stream goes on after the last run's events (`lastEventOf`), which read
  // again would show that run's end as the batch's state.
  if (state.eventIds.has(batchId)) headers["last-event-id"] = state.eventIds.get(batchId);
  try {
    const response = await fetch(`/v1/sms/batch/${encodeURIComponent(batchId)}/events`, {
      headers,
      cache: "no-store",
      signal: controller.signal,
    });
    if (!response.ok) return;
    await readEvents(response.body, (event, data, id) => {
      if (id !== null) state.eventIds.set(batchId, id);
      onBatchEvent(batchId, event, data);
    });
  } catch (error) {
    if (error.name !== "AbortError") console.warn("event stream", batchId, error);
  } finally {
    if (state.streams.get(batchId) === controller) state.streams.delete(batchId);
  }
}

// Server-sent events from a fetch() body: blocks split by a blank line, `event:`, `id:` and
// `data:` fields (data lines joined by newlines, as EventSource does).
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")), id);
    }
  }
}

function onBatchEvent(batchId, event, data) {
  const batch = state.batches.get(batchId);
  if (!batch) return;
  if (event === "progress") {
    const done = data.sent + data.failed;
    state.progress.set(batchId, { ...data, done, total: data.recipients });
    batch.status = data.paused ? "paused" : data.status;
  } else if (event === "status" && data.status !== "click") {
    batch.status = data.status;
    batch.code = data.code ?? null;
    if (FINAL.has(data.status) && data.messages_total !== undefined) {
      const waiting = data.messages_waiting_for_window ?? 0;
      state.progress.set(batchId, {
        sent: data.messages_successful,
        failed: data.messages_failed,
        done: data.messages_total - waiting,
        total: data.messages_total,
        final: true,
      });
    }
  }
  renderRow(batch);
  if (batchId === state.selected) {
    renderLive(batch);
    if (Date.now() - state.detailLoadedAt > DETAIL_REFRESH_MS || FINAL.has(batch.status)) {
      loadDetail().catch(failed);
    }
  }
}

// --- one batch -------------------------------------------------------------------------

function select(batchId) {
  state.selected = batchId;
  state.detailOf = null;
  state.errorsRejected = null;
  // A page of rejected rows still coming for the batch shown before is dropped.
  errorsRequest += 1;
  state.errorsCursor = null;
  $("more-errors").hidden = true;
  $("error-rows").replaceChildren();
  $("no-errors").hidden = true;
  // Nothing of the batch shown before, and no action, until this one's detail comes.
  $("detail-id").textContent = batchId;
  $("detail-reason").textContent = "";
  $("detail-progress-text").textContent = "";
  $("detail-counts").replaceChildren();
  statusBadge($("detail-status"), "");
  setProgress($("detail-progress"), null);
  $("temporal-link").removeAttribute("href");
  for (const action of ACTIONS) $(action).disabled = true;
  $("detail").hidden = false;
  for (const row of $("batch-rows").children) {
    row.classList.toggle("selected", row.dataset.batchId === batchId);
  }
  loadDetail().catch(failed);
  followRunning();
}

// The batch shown is read again while it runs, even when no event stream is open for it.
function refreshSelected() {
  const batch = state.batches.get(state.selected);
  const stale = Date.now() - state.detailLoadedAt > DETAIL_REFRESH_MS;
  if (batch && !FINAL.has(batch.status) && stale) loadDetail().catch(failed);
}

function renderLive(batch) {
  statusBadge($("detail-status"), batch.status);
  const progress = progressOf(batch);
  setProgress($("detail-progress"), progress.value);
  $("detail-progress-text").textContent = progress.text;
  const final = FINAL.has(batch.status);
  if (state.detailOf !== batch.batch_id || state.acting) {
    // Its progress events come before its detail is read (a second or so after the click).
    for (const action of ACTIONS) $(action).disabled = true;
    return;
  }
  // Paused by the carrier's throttling, it resumes by itself: a pause then holds it for good.
  $("pause").disabled =
    final || (batch.status === "paused" && batch.code !== "carrier_throttled");
  $("resume").disabled = batch.status !== "paused";
  $("cancel").disabled = final;
  // Only rows `failed` are sent again: a batch without any has nothing to retry (409).
  $("retry").disabled = !final || !(batch.counts?.failed > 0);
}

async function loadDetail() {
  const batchId = state.selected;
  state.detailLoadedAt = Date.now();
  const detail = await api(`/v1/sms/batch/${encodeURIComponent(batchId)}`);
  if (batchId !== state.selected) return;
  state.detailOf = batchId;
  const batch = { ...(state.batches.get(batchId) || {}), ...detail };
  state.batches.set(batchId, batch);
  state.ledger.set(batchId, ledgerProgress(detail));
  renderRow(batch);
  // Its rejected rows, from their first page, when their count is not the one read: a file
  // validated since the batch was clicked writes them all at the end.
  if (detail.counts.rejected !== state.errorsRejected) {
    state.errorsRejected = detail.counts.rejected;
    state.errorsCursor = null;
    $("error-rows").replaceChildren();
    loadErrors().catch(failed);
  }
  $("detail-id").textContent = batch.name ? `${batch.name} (${batchId})` : batchId;
  $("detail-reason").textContent = batch.code ? `${batch.code}: ${batch.reason ?? ""}` : "";
  $("temporal-link").href = detail.temporal_ui_url;
  const counts = $("detail-counts");
  counts.replaceChildren();
  const shown = [
    ["rows in the file", detail.rows_total],
    ["recipients", detail.recipients],
    ["segments", detail.segments_total],
    ...Object.entries(detail.counts),
  ];
  for (const [label, value] of shown) {
    const row = document.createElement("tr");
    row.dataset.count = label;
    cell(row, label);
    cell(row, value ?? "–", "count");
    counts.appendChild(row);
  }
  renderLive(batch);
}

function errorRow(body, rejected) {
  const row = document.createElement("tr");
  cell(row, rejected.row_number);
  cell(row, rejected.value);
  cell(row, rejected.code);
  cell(row, rejected.message);
  body.appendChild(row);
}

// The next page of the batch shown's rejected rows. "More" is disabled while a page loads,
// and a page asked for before another (a batch selected since) is dropped: each is appended
// once, to its own batch's rows.
async function loadErrors() {
  const batchId = state.selected;
  const request = ++errorsRequest;
  const cursor = state.errorsCursor;
  const after = cursor === null ? "" : `&cursor=${encodeURIComponent(cursor)}`;
  $("more-errors").disabled = true;
  try {
    const path = `/v1/sms/batch/${encodeURIComponent(batchId)}/errors?limit=${PAGE}${after}`;
    const page = await api(path);
    if (request !== errorsRequest) return;
    for (const rejected of page.rejected_rows) errorRow($("error-rows"), rejected);
    $("no-errors").hidden = $("error-rows").children.length > 0;
    $("more-errors").hidden = page.next_cursor === null;
    if (page.next_cursor !== null) state.errorsCursor = page.next_cursor;
  } finally {
    if (request === errorsRequest) $("more-errors").disabled = false;
  }
}

async function control(action) {
  const batchId = state.selected;
  if (!batchId) return;
  const batch = state.batches.get(batchId);
  const named = batch?.name ? `"${batch.name}" (${batchId})` : `batch ${batchId}`;
  if (action === "cancel" && !window.confirm(`Cancel ${named}? Rows not sent end cancelled.`)) {
    return;
  }
  const options = { method: "POST" };
  if (action === "retry") options.json = { statuses: ["failed"] };
  // One action at a time: a second click of Retry while the first was under way answered 409
  // over the first's success.
  state.acting = true;
  for (const button of ACTIONS) $(button).disabled = true;
  let done = null;
  try {
    if (action === "retry") await lastEventOf(batchId);
    const reply = await api(`/v1/sms/batch/${encodeURIComponent(batchId)}/${action}`, options);
    const rows = reply.rows === null ? "its rows, once its file is validated again," : `${reply.rows} rows`;
    done = action === "retry" ? `Retry: ${rows} again.` : `${action}: sent.`;
    notify(done);
    await loadBatches();
    state.acting = false;
    await loadDetail();
  } catch (error) {
    // The action done, the page's refresh failed: both said, so that it is not asked again.
    if (done === null || error instanceof StaleAnswer) {
      failed(error);
    } else {
      // Said until a refresh succeeds, as a failed periodic refresh is (refreshFailed).
      notify(`${done} The page could not be refreshed: ${messageOf(error)}`, true);
      $("notice").dataset.refresh = "";
    }
  } finally {
    state.acting = false;
    const shown = state.batches.get(state.selected);
    if (shown) renderLive(shown);
  }
}

// Where a finished batch's events end, kept for the stream of its retry: a finished batch's
// stream gives every event it has and ends. One retried meanwhile (from another tab, the CLI)
// streams on with its new run: read for at most LAST_EVENT_MS, the actions held meanwhile.
async function lastEventOf(batchId) {
  const reading = new AbortController();
  const timer = setTimeout(() => reading.abort(), LAST_EVENT_MS);
  try {
    const response = await fetch(`/v1/sms/batch/${encodeURIComponent(batchId)}/events`, {
      headers: { ...authHeaders(), accept: "text/event-stream" },
      cache: "no-store",
      signal: reading.signal,
    });
    if (!response.ok) return;
    await readEvents(response.body, (event, data, id) => {
      if (id !== null) state.eventIds.set(batchId, id);
    });
  } catch (error) {
    if (!reading.signal.aborted) throw error;
  } finally {
    clearTimeout(timer);
  }
}

// --- dry run ---------------------------------------------------------------------------

async function dryRun(event) {
  event.preventDefault();
  const file = $("dry-file").files[0];
  if (!file) return;
  const button = $("dry-run-form").querySelector("button");
  button.disabled = true;
  const form = new FormData();
  form.append("file_type", "batches");
  form.append("file", file);
  try {
    notify("Uploading…");
    const attached = await api("/v1/files/attach", { method: "POST", form });
    const global = { agent_number: $("dry-sender").value.trim() };
    const message = $("dry-message").value;
    if (message) global.agent_message = message;
    const preview = await api("/v1/sms/batch", {
      method: "POST",
      json: { file_id: attached.file_id, global, dry_run: true },
    });
    notify("");
    showDryRun(preview);
  } catch (error) {
    failed(error);
  } finally {
    button.disabled = false;
  }
}

function showDryRun(preview) {
  $("dry-result").hidden = false;
  $("dry-summary").textContent = preview.code
    ? `The batch would fail: ${preview.code}: ${preview.reason ?? ""}`
    : `The batch would send ${preview.to_send} messages.`;
  const cost = preview.estimated_cost;
  const counts = $("dry-counts");
  counts.replaceChildren();
  for (const [label, value] of [
    ["rows", preview.rows_total],
    ["to send", preview.to_send],
    ["skipped", preview.skipped],
    ["rejected", preview.rejected],
    ["segments", preview.segments_total],
    ["GSM-7 / UCS-2", `${preview.messages_gsm7} / ${preview.messages_ucs2}`],
    ["estimated cost", `${cost.total} ${cost.currency}`],
    // Messages to countries without a price, not in the cost.
    ["not priced", `${cost.unknown_messages} messages, ${cost.unknown_segments} segments`],
  ]) {
    const row = document.createElement("tr");
    cell(row, label);
    cell(row, value);
    counts.appendChild(row);
  }
  const messages = $("dry-messages");
  messages.replaceChildren();
  for (const message of preview.messages) {
    const row = document.createElement("tr");
    cell(row, message.row_number);
    cell(row, message.to_number);
    cell(row, message.body);
    cell(row, message.segments);
    cell(row, message.skip_code);
    messages.appendChild(row);
  }
  $("dry-errors").replaceChildren();
  for (const rejected of preview.rejected_rows) errorRow($("dry-errors"), rejected);
}

async function loadSenders() {
  try {
    const { numbers } = await api("/v1/sms/numbers?limit=1000");
    const list = $("senders");
    list.replaceChildren();
    for (const sender of numbers) {
      const option = document.createElement("option");
      option.value = sender.number;
      list.appendChild(option);
    }
    // The preview is of an SMS batch: a sender registered for WhatsApp only would be refused.
    const sms = numbers.find((sender) => sender.channel === "sms");
    if (sms && !$("dry-sender").value) $("dry-sender").value = sms.number;
  } catch {
    // A key without `numbers:read` types the sender by hand.
  }
}

// --- the key ---------------------------------------------------------------------------

function signIn(key) {
  sessionStorage.setItem(KEY_ITEM, key);
  start();
}

// Every table, panel and field that showed the account's data; emptied at sign-out, so that
// the next key's account sees none of it.
const ACCOUNT_TABLES = [
  "batch-rows",
  "detail-counts",
  "error-rows",
  "dry-counts",
  "dry-messages",
  "dry-errors",
  "senders",
];
const ACCOUNT_TEXTS = [
  "notice",
  "detail-id",
  "detail-reason",
  "detail-progress-text",
  "dry-summary",
];
const ACCOUNT_PANELS = ["no-batches", "detail", "no-errors", "more-errors", "dry-result"];
const ACCOUNT_FIELDS = ["dry-file", "dry-sender", "dry-message"];

function signOut(message = "") {
  sessionStorage.removeItem(KEY_ITEM);
  for (const controller of state.streams.values()) controller.abort();
  clearInterval(state.listTimer);
  clearInterval(state.detailTimer);
  state = newState();
  for (const id of ACCOUNT_TABLES) $(id).replaceChildren();
  for (const id of ACCOUNT_TEXTS) $(id).textContent = "";
  for (const id of ACCOUNT_PANELS) $(id).hidden = true;
  for (const id of ACCOUNT_FIELDS) $(id).value = "";
  statusBadge($("detail-status"), "");
  setProgress($("detail-progress"), null);
  $("temporal-link").removeAttribute("href");
  $("app").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("who").textContent = message;
}

// A tab out of sight gives its streams' connections back, so that a tab in sight has them;
// each stream opens again, from its last event, when the tab is back in sight.
function onVisibility() {
  if (document.visibilityState === "hidden") {
    for (const controller of state.streams.values()) controller.abort();
    state.streams.clear();
  } else if (apiKey()) {
    followRunning();
  }
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget").hidden = false;
  $("who").textContent = "";
  loadBatches().catch(failed);
  loadSenders();
  clearInterval(state.listTimer);
  state.listTimer = setInterval(() => refreshBatches().catch(refreshFailed), LIST_REFRESH_MS);
  clearInterval(state.detailTimer);
  state.detailTimer = setInterval(refreshSelected, DETAIL_REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (key) signIn(key);
  });
  $("forget").addEventListener("click", () => signOut());
  $("refresh").addEventListener("click", () => loadBatches().catch(failed));
  $("more-errors").addEventListener("click", () => loadErrors().catch(failed));
  for (const action of ACTIONS) {
    $(action).addEventListener("click", () => control(action));
  }
  $("dry-run-form").addEventListener("submit", dryRun);
  document.addEventListener("visibilitychange", onVisibility);
  if (apiKey()) start();
});
