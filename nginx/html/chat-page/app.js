// The chat page: a thread list, the open thread with its answer streaming in, and the user's
// tasks beside it. It speaks /api/chatkit as the ChatKit web client does and reads the tasks
// through /api/mcp. Every text the user or the model wrote is put in the page as text.
import { AuthError, Backend, secondsLeft } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const tokenKey = "chatkit-token";
const pageSize = 20;

const state = {
  backend: null,
  thread: null,          // {id, title} of the open thread, null for a new chat
  items: new Map(),      // item id -> {item, element}
  threadsAfter: null,    // the next page of the thread list starts after this id
  streaming: null,       // the AbortController of the answer being streamed
  streamFailed: false,   // the stream reported an error: its words stay in the status line
  view: 0,               // counts the views shown: what a request started for an older one is dropped
  tasksAsked: 0,         // counts task list requests: only the newest one's answer is shown
};

// The token comes in the URL fragment, which browsers never send to a server; it is kept for
// this tab only and taken out of the address bar and this tab's history entry (a browser may
// still list the address it was opened with among the pages visited).
function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem(tokenKey, fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(tokenKey);
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

function signedOut(why) {
  sessionStorage.removeItem(tokenKey);
  notice(`${why} Open this page again with a fresh link ending in #token=… (nginx/run-local prints one).`);
  for (const control of document.querySelectorAll("button, textarea")) control.disabled = true;
}

function status(text) {
  $("status").textContent = text;
}

// Any failure of a request: a token problem signs the page out, the rest is said in the status line.
function failed(error) {
  if (error instanceof AuthError) signedOut(`The server did not accept your token (${error.message}).`);
  else if (error.name === "AbortError") status("Stopped.");
  else status(`Something went wrong: ${error.message}`);
}

// MARK: Threads

async function loadThreads(more = false) {
  const params = { limit: pageSize, order: "desc" };
  if (more) params.after = state.threadsAfter;
  $("more-threads").disabled = true;
  try {
    const page = await state.backend.request("threads.list", params);
    if (!more) $("thread-list").replaceChildren();
    for (const thread of page.data) $("thread-list").append(threadEntry(thread));
    state.threadsAfter = page.has_more ? page.after : null;
    $("more-threads").hidden = !page.has_more;
    if (state.thread) showThread(state.thread);  // one started while the list loaded stays listed
  } finally {
    $("more-threads").disabled = false;
  }
}

function threadEntry(thread) {
  const entry = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.threadId = thread.id;
  button.textContent = thread.title || "Untitled chat";
  button.addEventListener("click", () => openThread(thread.id).catch(failed));
  entry.append(button);
  return entry;
}

function markCurrentThread() {
  for (const button of $("thread-list").querySelectorAll("button")) {
    if (button.dataset.threadId === state.thread?.id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

function showThread(thread) {
  state.thread = thread && { id: thread.id, title: thread.title || "" };
  $("thread-title").textContent = thread ? thread.title || "Untitled chat" : "New chat";
  $("rename-thread").hidden = $("delete-thread").hidden = !thread;
  const entry = thread && $("thread-list").querySelector(`button[data-thread-id="${CSS.escape(thread.id)}"]`);
  if (entry) entry.textContent = thread.title || "Untitled chat";
  else if (thread) $("thread-list").prepend(threadEntry(thread));
  markCurrentThread();
}

/** Clears the view, ending an answer still streaming into it; returns the new view's number. */
function newChat() {
  state.streaming?.abort();
  state.view += 1;
  showThread(null);
  state.items.clear();
  $("messages").replaceChildren();
  updateRetry();
  status("");
  $("input").focus();
  return state.view;
}

async function openThread(id) {
  const view = newChat();
  const thread = await state.backend.request("threads.get_by_id", { thread_id: id });
  if (view !== state.view) return;  // another thread was opened meanwhile
  showThread(thread);
  let page = thread.items;
  for (;;) {
    for (const item of page.data) showItem(item);
    if (!page.has_more) break;
    page = await state.backend.request("items.list", { thread_id: id, order: "asc", limit: 100, after: page.after });
    if (view !== state.view) return;
  }
  updateRetry();
  scrollToEnd();
}

async function renameThread() {
  const title = prompt("Rename this chat", state.thread.title);
  if (title === null) return;
  showThread(await state.backend.request("threads.update", { thread_id: state.thread.id, title }));
}

async function deleteThread() {
  if (!confirm(`Delete “${state.thread.title || "Untitled chat"}”?`)) return;
  const id = state.thread.id;
  newChat();
  await state.backend.request("threads.delete", { thread_id: id });
  await loadThreads();
}

// MARK: Items

function showItem(item) {
  const known = state.items.get(item.id);
  const element = known?.element ?? document.createElement("li");
  element.replaceChildren();
  element.dataset.itemId = item.id;
  element.dataset.type = item.type;
  switch (item.type) {
    case "user_message":
      element.className = "message user";
      element.append(textBlock(userText(item)));
      break;
    case "assistant_message":
      element.className = "message assistant";
      element.append(answerBody(item.content.map((part) => part.text).join("")), feedbackButtons(item.id));
      break;
    case "workflow":
      element.className = "workflow";
      element.append(workflowList(item.workflow));
      break;
    case "client_tool_call":
      element.className = "workflow";
      element.append(textBlock(`The app was asked to run ${item.name}.`));
      break;
    default:
      return; // nothing to show (end of turn, hidden context)
  }
  state.items.set(item.id, { item, element });
  if (!known) $("messages").append(element);
}

function userText(item) {
  const text = item.content.map((part) => part.text ?? "").join("");
  return item.quoted_text ? `> ${item.quoted_text}\n\n${text}` : text;
}

function textBlock(text) {
  const block = document.createElement("div");
  block.className = "body";
  block.textContent = text;
  return block;
}

function answerBody(text) {
  const block = document.createElement("div");
  block.className = "body";
  block.append(renderMarkdown(text));
  return block;
}

function feedbackButtons(itemId) {
  const group = document.createElement("div");
  group.className = "feedback";
  for (const [kind, label, title] of [["positive", "Good", "Rate this answer good"], ["negative", "Bad", "Rate this answer bad"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.title = title;
    button.setAttribute("aria-label", title);
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", async () => {
      try {
        await state.backend.request("items.feedback", { thread_id: state.thread.id, item_ids: [itemId], kind });
        for (const other of group.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === button));
      } catch (error) {
        failed(error);
      }
    });
    group.append(button);
  }
  return group;
}

function workflowList(workflow) {
  const list = document.createElement("ul");
  for (const task of workflow.tasks) {
    const entry = document.createElement("li");
    entry.textContent = task.content ? `${task.title}: ${task.content}` : task.title;
    if (task.status_indicator === "loading") entry.className = "running";
    list.append(entry);
  }
  return list;
}

// MARK: Streaming

function handleEvent(event) {
  switch (event.type) {
    case "thread.created":
    case "thread.updated":
      showThread(event.thread);
      break;
    case "thread.item.added":
    case "thread.item.done":
      showItem(event.item);
      scrollToEnd();
      break;
    case "thread.item.updated":
      applyUpdate(event.item_id, event.update);
      break;
    case "progress_update":
      status(event.text);
      break;
    case "error":
      state.streamFailed = true;
      status(event.message || "The answer failed. Try again.");
      break;
  }
}

function applyUpdate(itemId, update) {
  const known = state.items.get(itemId);
  if (!known) return;
  const item = known.item;
  switch (update.type) {
    case "assistant_message.content_part.added":
    case "assistant_message.content_part.done":
      item.content[update.content_index] = update.content;
      break;
    case "assistant_message.content_part.text_delta":
      item.content[update.content_index] ??= { type: "output_text", text: "", annotations: [] };
      item.content[update.content_index].text += update.delta;
      break;
    case "workflow.task.added":
    case "workflow.task.updated":
      item.workflow.tasks[update.task_index] = update.task;
      // A tool ran: the tasks beside the chat may have changed.
      if (update.type === "workflow.task.updated") refreshTasks();
      break;
    default:
      return;
  }
  showItem(item);
  scrollToEnd();
}

/** Streams an answer into the current view; false when it failed before any event came (and
 * the view is still the one it was sent from). */
async function streamAnswer(type, params) {
  const controller = new AbortController();
  const view = state.view;
  let events = 0;
  state.streaming = controller;
  $("send").disabled = true;
  $("stop").hidden = false;
  updateRetry();
  state.streamFailed = false;
  status("Thinking…");
  try {
    await state.backend.stream(type, params, (event) => {
      events += 1;
      if (view === state.view) handleEvent(event);
    }, controller.signal);
    if (view === state.view && !state.streamFailed) status("");
  } catch (error) {
    if (view === state.view || error instanceof AuthError) failed(error);
  } finally {
    if (state.streaming === controller) {
      state.streaming = null;
      const focusLost = [$("stop"), $("retry")].includes(document.activeElement);
      $("send").disabled = !sessionStorage.getItem(tokenKey);
      $("stop").hidden = true;
      updateRetry();
      if (focusLost) $("input").focus();
      refreshTasks();
    }
  }
  return events > 0 || view !== state.view;
}

async function send(text) {
  const input = { content: [{ type: "input_text", text }], attachments: [], inference_options: {} };
  const answered = state.thread
    ? await streamAnswer("threads.add_user_message", { thread_id: state.thread.id, input })
    : await streamAnswer("threads.create", { input });
  if (!answered && !$("input").value) $("input").value = text;  // not taken: keep what was typed
}

function lastUserMessage() {
  return [...state.items.values()].reverse().find(({ item }) => item.type === "user_message");
}

function updateRetry() {
  $("retry").hidden = state.streaming !== null || !state.thread || !lastUserMessage();
}

// Answers the last message again: what followed it goes, here as on the server.
async function retry() {
  const last = lastUserMessage();
  if (!last) return;
  let after = last.element.nextElementSibling;
  while (after) {
    const next = after.nextElementSibling;
    state.items.delete(after.dataset.itemId);
    after.remove();
    after = next;
  }
  await streamAnswer("threads.retry_after_item", { thread_id: state.thread.id, item_id: last.item.id });
}

function scrollToEnd() {
  $("messages").lastElementChild?.scrollIntoView({ block: "end" });
}

// MARK: Tasks, through MCP

async function refreshTasks() {
  const asked = ++state.tasksAsked;
  try {
    const { tasks } = await state.backend.callTool("list_tasks", { status: "all" });
    if (asked !== state.tasksAsked) return;  // a newer answer is on its way
    $("tasks").replaceChildren(...tasks.map((task) => {
      const entry = document.createElement("li");
      entry.textContent = `${task.id}. ${task.title}`;
      if (task.completed) entry.className = "done";
      return entry;
    }));
    $("tasks-empty").textContent = "No tasks yet.";
    $("tasks-empty").hidden = tasks.length > 0;
  } catch (error) {
    if (error instanceof AuthError) return failed(error);
    $("tasks-empty").textContent = `The task list could not be loaded: ${error.message}`;
    $("tasks-empty").hidden = false;
  }
}

// MARK: Start

function start() {
  // A new link pasted into this tab's address bar changes only the fragment: start over with it.
  addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.slice(1)).has("token")) location.reload();
  });
  const token = takeToken();
  if (!token) {
    signedOut("This page needs a sign-in token.");
    return;
  }
  const left = secondsLeft(token);
  if (left !== null && left <= 0) {
    signedOut("Your sign-in token has expired.");
    return;
  }
  state.backend = new Backend(token);

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value;
    if (!text.trim() || state.streaming) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.streaming?.abort());
  $("retry").addEventListener("click", () => retry());
  $("new-thread").addEventListener("click", newChat);
  $("more-threads").addEventListener("click", () => loadThreads(true).catch(failed));
  $("rename-thread").addEventListener("click", () => renameThread().catch(failed));
  $("delete-thread").addEventListener("click", () => deleteThread().catch(failed));

  loadThreads().catch(failed);
  refreshTasks();
  $("input").focus();
}

start();
