// The three faces this page speaks, as their own clients do: /api/chatkit (JSON requests and
// event streams, as the ChatKit web client sends them) and /api/mcp (tools/call).

export class AuthError extends Error {}

export class RequestError extends Error {
  constructor(status, detail) {
    super(detail || `the server answered ${status}`);
    this.status = status;
  }
}

export class Backend {
  constructor(token) {
    this.token = token;
  }

  async #post(path, body, signal) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Authorization": `Bearer ${this.token}`, "Content-Type": "application/json",
                 "Accept": "application/json, text/event-stream" },
      body: JSON.stringify(body),
      signal,
    });
    if (response.status === 401) throw new AuthError((await detail(response)) || "not signed in");
    if (!response.ok) throw new RequestError(response.status, await detail(response));
    return response;
  }

  /** A ChatKit request answered with one JSON body. */
  async request(type, params = {}) {
    return (await this.#post("/api/chatkit", { type, params })).json();
  }

  /** A ChatKit request answered with events: each is handed to `onEvent` as it arrives. */
  async stream(type, params, onEvent, signal) {
    const response = await this.#post("/api/chatkit", { type, params }, signal);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    // Events end at a blank line; ":" lines are keepalives.
    const deliver = (block) => {
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
      if (data.length) onEvent(JSON.parse(data.join("\n")));
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        buffered += decoder.decode(value, { stream: !done });
        // Line ends may be CRLF or CR; a CR at the end of a read may start a CRLF.
        const heldCR = !done && buffered.endsWith("\r");
        buffered = (heldCR ? buffered.slice(0, -1) : buffered).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          deliver(buffered.slice(0, end));
          buffered = buffered.slice(end + 2);
        }
        if (heldCR) buffered += "\r";
        if (done) break;
      }
      deliver(buffered);
    } finally {
      reader.cancel().catch(() => {});  // a failed handler stops the answer too
    }
  }

  /** An MCP tool's structured result. */
  async callTool(name, args = {}) {
    const response = await this.#post("/api/mcp", {
      jsonrpc: "2.0", id: 1, method: "tools/call", params: { name, arguments: args },
    });
    const reply = await response.json();
    if (reply.error) throw new RequestError(200, reply.error.message);
    if (reply.result.isError) throw new RequestError(200, reply.result.content?.[0]?.text);
    return reply.result.structuredContent;
  }
}

async function detail(response) {
  try {
    return (await response.json()).detail;
  } catch {
    return null;
  }
}

/** Seconds until a JWT expires, or null when it says nothing (the server decides either way). */
export function secondsLeft(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.exp === "number" ? payload.exp - Date.now() / 1000 : null;
  } catch {
    return null;
  }
}
