// Group push: the browser client. One ES module, no dependencies, no build step. The gateway
// serves it at /client.js on its admin HTTP server; docs/client.md shows how to use it, and
// docs/protocol.md is the protocol it speaks.
//
//   import { GroupPushClient } from "/client.js";
//   const client = new GroupPushClient("ws://127.0.0.1:1234/");
//   client.on("message", (group, text, meta) => console.log(group, text, meta));
//   await client.join("chat:1", { positioned: true });
//   await client.send("chat:1", "hello");
//
// What it adds to a bare WebSocket: every request carries a req_id and returns a promise settled
// by the server's reply; the connection is opened again after a loss, with exponential backoff
// and jitter; the groups joined (and the uid bound) are joined (bound) again on the new
// connection, and groups joined with positions recover what was sent meanwhile.

/** How long a request waits for its reply by default, in milliseconds. */
const DEFAULT_TIMEOUT_MS = 10000;
/** Reconnection delays, in milliseconds: doubling from `min` up to `max`, with jitter. */
const DEFAULT_BACKOFF = { min: 500, max: 10000 };

/** The reply each command gets when it succeeds (an `ack` for the others). */
const REPLY_CMD = { whoami: 'whoami', count: 'count', members: 'members' };

/**
 * A request the server refused (`code` is its error code, `reply` the error reply), or one that
 * got no answer: `code` is then `timeout` (no reply within the timeout), `closed` (the connection
 * was lost before the reply: the request may or may not have been done) or `stopped` (the client
 * was closed).
 */
export class GroupPushError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {object} [reply]
   */
  constructor(code, message, reply) {
    super(message);
    this.name = 'GroupPushError';
    this.code = code;
    this.reply = reply;
  }
}

/**
 * A connection to a gateway that comes back by itself.
 *
 * Events (`on(name, handler)`):
 * - `connecting` (`{attempt}`): a WebSocket is being opened.
 * - `open` (`{reconnected}`): the connection is up; requests made meanwhile are sent.
 * - `close` (`{code, reason, delay}`): the connection is lost; the next attempt is in `delay`
 *   ms (`null` after `close()`). Requests sent and not yet answered are rejected (`closed`).
 * - `reconnect` (`{groups, failed}`): after a reconnection, every group is joined again
 *   (`failed`: those the server refused this time, which are no longer joined).
 * - `recovered` (`group, recovered, reply`): a group joined with positions was joined again
 *   from the position of its last message. `recovered` is `true` when every message since
 *   has been delivered (as `message` events, before this one), `false` when some are lost
 *   (a new epoch, or the history no longer reaches back): reload the application's state.
 * - `message` (`group, text, meta`): a message. For groups joined with positions, `group` is
 *   its group and `meta` is `{offset, epoch}`; otherwise the protocol sends the text alone, so
 *   `group` is `null` and `meta` is `{}`.
 * - `presence` (`group, {type, clientId, uid}`): `type` `join` or `leave`, in a group joined
 *   with `presence: true`.
 * - `error` (`error`): an error reply that answers no request (e.g. `rate_limited`), or a group
 *   or uid the server refused to take back after a reconnection (`error.group`, `error.uid`).
 */
export class GroupPushClient {
  /**
   * Connects at once.
   * @param {string} url The gateway's WebSocket URL, e.g. `wss://push.example.com/`.
   * @param {object} [options]
   * @param {{min?: number, max?: number}} [options.backoff] Reconnection delays, ms.
   * @param {number} [options.timeout] How long a request waits for its reply, ms.
   * @param {string | (() => string | Promise<string>)} [options.token] A join token, sent in
   *   the URL (`?token=`) of each connection; a function is called before each one.
   * @param {typeof WebSocket} [options.WebSocket] The WebSocket class to use.
   */
  constructor(url, options = {}) {
    this.url = url;
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this.timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    this._token = options.token ?? null;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._handlers = new Map();
    this._ws = null;
    this._attempt = 0;
    this._opened = false; // whether a connection was ever open
    this._stopped = false;
    this._retryTimer = null;
    // req_ids are this prefix and a counter: a group message cannot pass for a reply to a
    // request it does not know the prefix of.
    this._prefix = Math.random().toString(36).slice(2, 10) + '-';
    this._nextId = 1;
    this._pending = new Map(); // req_id -> request, sent and waiting for its reply
    this._queue = []; // requests made while not connected, sent on open
    // Joined groups (acknowledged), re-joined after a reconnection:
    // group -> {presence, positioned, position: {offset, epoch} | null}.
    this._groups = new Map();
    this._joining = new Map(); // group -> the same, for joins sent and not yet answered
    this._leaving = new Map(); // group -> the same, for leaves sent and not yet answered
    this._uid = null; // bound by bindUid, bound again after a reconnection
    this._connect();
  }

  // ---- events ---------------------------------------------------------------------------

  /**
   * Calls `handler` on each `event` (see the class). Returns a function that removes it.
   * @param {string} event
   * @param {Function} handler
   * @returns {() => void}
   */
  on(event, handler) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(handler);
    return () => this.off(event, handler);
  }

  /** Removes a handler added with `on`. */
  off(event, handler) {
    const handlers = this._handlers.get(event);
    if (handlers) handlers.delete(handler);
  }

  _emit(event, ...args) {
    for (const handler of [...(this._handlers.get(event) || [])]) {
      try {
        handler(...args);
      } catch (error) {
        // One handler's bug must not stop the client: report it as any uncaught error.
        setTimeout(() => { throw error; });
      }
    }
  }

  // ---- state ------------------------------------------------------------------------------

  /** `connecting`, `open`, `closed` (waiting to reconnect) or `stopped` (after `close()`). */
  get state() {
    if (this._stopped) return 'stopped';
    if (!this._ws) return 'closed';
    return ['connecting', 'open'][this._ws.readyState] || 'closed';
  }

  /** The groups joined, in joining order. */
  get groups() {
    return [...this._groups.keys()];
  }

  /**
   * The position of the last message received from a group joined with positions (or of its
   * `joined` reply): what a reconnection recovers from. `null` if none.
   * @param {string} group
   * @returns {{offset: number, epoch: string} | null}
   */
  position(group) {
    const entry = this._groups.get(String(group));
    return entry && entry.position ? { ...entry.position } : null;
  }

  // ---- commands ---------------------------------------------------------------------------

  /**
   * Joins a group; re-joined after every reconnection until `leave`.
   * @param {string | number} group
   * @param {object} [options]
   * @param {boolean} [options.presence] Also receive the group's `presence` events.
   * @param {boolean} [options.positioned] Receive its messages with their position (a group
   *   with history only); resolves with the `joined` reply, `{offset, epoch}` the group's last.
   * @param {{offset: number, epoch: string}} [options.recover] With `positioned`: first
   *   receive what was sent after this position (then a `recovered` event).
   * @returns {Promise<object>} The reply (`ack` or `joined`).
   */
  join(group, options = {}) {
    group = String(group);
    const entry = {
      presence: !!options.presence,
      positioned: !!options.positioned,
      position: options.recover ? { ...options.recover } : null,
    };
    return this._join(group, entry, !!options.recover);
  }

  /**
   * Leaves a group. Resolves at once when not connected (a new connection is in no group),
   * unless a join of it waits for the connection: the leave then follows it.
   * @param {string | number} group
   * @returns {Promise<object | null>}
   */
  leave(group) {
    group = String(group);
    const entry = this._entry(group);
    this._groups.delete(group);
    this._joining.delete(group);
    const joinWaits = this._queue.some(
      (r) => r.command.cmd === 'add_group' && r.command.group_id === group,
    );
    if (this.state !== 'open' && !joinWaits) return Promise.resolve(null);
    // Its messages sent before the leave still arrive meanwhile, and are still recognised.
    if (entry) this._leaving.set(group, entry);
    const forget = () => {
      if (this._leaving.get(group) === entry) this._leaving.delete(group);
    };
    const reply = this._request({ cmd: 'leave_group', group_id: group });
    reply.then(forget, forget);
    return reply;
  }

  /**
   * Sends a message to every member of a group (the sender need not be one).
   * @param {string | number} group
   * @param {*} message A string is delivered as its text, any other value as its JSON.
   * @param {{exclude?: string[]}} [options] Client ids that must not receive it.
   * @returns {Promise<object>} Resolved on the ack: the gateway took the message.
   */
  send(group, message, options = {}) {
    const command = { cmd: 'send_to_group', group_id: String(group), message };
    if (options.exclude) command.exclude = options.exclude;
    return this._request(command);
  }

  /** Sends to every connection bound to `uid` (or to one of an array of uids). */
  sendToUid(uid, message) {
    return this._request({ cmd: 'send_to_uid', uid, message });
  }

  /** Sends to one connection, by its client id (see `whoami`). */
  sendToClient(clientId, message) {
    return this._request({ cmd: 'send_to_client', client_id: clientId, message });
  }

  /** Sends to every connection of every gateway, but `options.exclude`. */
  sendToAll(message, options = {}) {
    const command = { cmd: 'send_to_all', message };
    if (options.exclude) command.exclude = options.exclude;
    return this._request(command);
  }

  /**
   * Binds this connection to the application's user id (without join tokens); bound again
   * after every reconnection until `unbindUid`.
   * @param {string | number} uid
   */
  async bindUid(uid) {
    const reply = await this._request({ cmd: 'bind_uid', uid });
    this._uid = uid;
    return reply;
  }

  /** Unbinds this connection's uid. */
  unbindUid() {
    this._uid = null;
    return this._request({ cmd: 'unbind_uid' });
  }

  /**
   * Presents a join token on the open connection; once accepted, later connections present it
   * in their URL.
   * @param {string} token
   */
  async auth(token) {
    const reply = await this._request({ cmd: 'auth', token });
    this._token = token;
    return reply;
  }

  /** @returns {Promise<{client_id: string, uid: string | null, groups: string[]}>} */
  whoami() {
    return this._request({ cmd: 'whoami' });
  }

  /**
   * The group's connections and distinct uids on every gateway.
   * @returns {Promise<{connections: number, uids: number, nodes: object}>}
   */
  count(group) {
    return this._request({ cmd: 'count', group_id: String(group) });
  }

  /**
   * A page of the group's members; pass the reply's `cursor` back for the next one.
   * @param {string | number} group
   * @param {{limit?: number, cursor?: string | null}} [options]
   * @returns {Promise<{members: {client_id: string, uid: string | null}[], cursor: string | null}>}
   */
  members(group, options = {}) {
    const command = { cmd: 'members', group_id: String(group) };
    if (options.limit !== undefined) command.limit = options.limit;
    if (options.cursor !== undefined && options.cursor !== null) command.cursor = options.cursor;
    return this._request(command);
  }

  /** Closes the connection for good: no reconnection; every request waiting is rejected. */
  close() {
    if (this._stopped) return;
    this._stopped = true;
    clearTimeout(this._retryTimer);
    const stopped = () => new GroupPushError('stopped', 'the client was closed');
    for (const request of this._queue.splice(0)) request.fail(stopped());
    this._failPending(stopped);
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(1000);
      this._emit('close', { code: 1000, reason: 'closed by the client', delay: null });
    }
  }

  // ---- requests ---------------------------------------------------------------------------

  /**
   * Sends `command` with a fresh req_id (now, or on the next open). The promise settles on
   * the reply, or fails with a timeout, the connection's loss or `close()`.
   */
  _request(command, expect = REPLY_CMD[command.cmd] || 'ack') {
    return new Promise((resolve, reject) => {
      if (this._stopped) {
        reject(new GroupPushError('stopped', 'the client was closed'));
        return;
      }
      const request = { command, expect, id: null };
      const timer = setTimeout(() => {
        this._pending.delete(request.id);
        const at = this._queue.indexOf(request);
        if (at >= 0) this._queue.splice(at, 1);
        reject(new GroupPushError('timeout', `no reply to ${command.cmd} within ${this.timeout} ms`));
      }, this.timeout);
      request.done = (reply) => { clearTimeout(timer); resolve(reply); };
      request.fail = (error) => { clearTimeout(timer); reject(error); };
      if (this.state === 'open') this._send(request);
      else this._queue.push(request);
    });
  }

  _send(request) {
    request.id = this._prefix + this._nextId++;
    this._pending.set(request.id, request);
    this._ws.send(JSON.stringify({ ...request.command, req_id: request.id }));
  }

  _failPending(error) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const request of pending) request.fail(error());
  }

  /** Sends an add_group for `entry`; records the group once the server took it. */
  async _join(group, entry, recovering) {
    const command = { cmd: 'add_group', group_id: group };
    if (entry.presence) command.presence = true;
    if (entry.positioned) {
      command.positioned = true;
      if (entry.position) command.recover = entry.position;
    }
    this._joining.set(group, entry);
    try {
      const reply = await this._request(command, entry.positioned ? 'joined' : 'ack');
      if (entry.positioned) this._onJoined(group, entry, reply, recovering);
      // Unless left (or joined again) meanwhile: re-inserted last, in joining order.
      if (this._joining.get(group) === entry) {
        this._groups.delete(group);
        this._groups.set(group, entry);
      }
      return reply;
    } finally {
      if (this._joining.get(group) === entry) this._joining.delete(group);
    }
  }

  _onJoined(group, entry, reply, recovering) {
    if (typeof reply.epoch === 'string' && Number.isInteger(reply.offset)) {
      const at = entry.position;
      if (!at || at.epoch !== reply.epoch || reply.offset > at.offset) {
        entry.position = { offset: reply.offset, epoch: reply.epoch };
      }
    }
    if (recovering) this._emit('recovered', group, reply.recovered === true, reply);
  }

  // ---- connection -------------------------------------------------------------------------

  async _connect() {
    this._retryTimer = null;
    this._emit('connecting', { attempt: this._attempt });
    let url = this.url;
    try {
      const token = typeof this._token === 'function' ? await this._token() : this._token;
      if (token) {
        const withToken = new URL(url);
        withToken.searchParams.set('token', token);
        url = withToken.toString();
      }
    } catch (error) {
      this._emit('error', error);
      this._retry({ code: 1006, reason: 'no token' });
      return;
    }
    if (this._stopped) return;
    const ws = new this._WebSocket(url);
    this._ws = ws;
    ws.onopen = () => this._onOpen();
    ws.onmessage = (event) => this._onFrame(event.data);
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._failPending(() => new GroupPushError('closed', 'the connection was lost'));
      this._retry(event);
    };
  }

  _retry(event) {
    const step = Math.min(this.backoff.max, this.backoff.min * 2 ** this._attempt++);
    // Half of it fixed, half random: clients that lost one gateway do not all come back at once.
    const delay = Math.round(step / 2 + Math.random() * (step / 2));
    this._retryTimer = setTimeout(() => this._connect(), delay);
    this._emit('close', { code: event.code, reason: event.reason || '', delay });
  }

  _onOpen() {
    const reconnected = this._opened;
    this._opened = true;
    this._attempt = 0;
    // A new connection has no uid and is in no group: take them back first, in order, before
    // the requests made meanwhile.
    const rejoins = [];
    if (this._uid !== null) {
      const uid = this._uid;
      this._request({ cmd: 'bind_uid', uid }).catch((error) => {
        if (error.code === 'closed' || error.code === 'stopped') return;
        if (this._uid === uid) this._uid = null;
        error.uid = uid;
        this._emit('error', error);
      });
    }
    for (const [group, entry] of this._groups) {
      const recovering = entry.positioned;
      rejoins.push(this._join(group, entry, recovering).then(
        () => ({ group, ok: true }),
        (error) => {
          if (error.code === 'closed' || error.code === 'stopped') return { group, ok: null };
          if (this._groups.get(group) === entry) this._groups.delete(group);
          error.group = group;
          this._emit('error', error);
          return { group, ok: false };
        },
      ));
    }
    for (const request of this._queue.splice(0)) this._send(request);
    this._emit('open', { reconnected });
    if (!reconnected) return;
    Promise.all(rejoins).then((results) => {
      // Lost again meanwhile: the next open tries again.
      if (results.some((r) => r.ok === null)) return;
      this._emit('reconnect', {
        groups: results.filter((r) => r.ok).map((r) => r.group),
        failed: results.filter((r) => !r.ok).map((r) => r.group),
      });
    });
  }

  // A frame is a reply to a pending request (its req_id, and the expected cmd or an error), an
  // error reply without req_id, a positioned message of a group joined with positions, a
  // presence event of a group joined with presence; anything else is a group message, whose
  // text may be anything, JSON included (the protocol does not frame group messages).
  _onFrame(text) {
    if (typeof text !== 'string') return;
    let frame = null;
    if (text.startsWith('{')) {
      try {
        frame = JSON.parse(text);
      } catch (_) {
        // Not JSON: a group message.
      }
    }
    if (frame !== null && typeof frame === 'object' && typeof frame.cmd === 'string') {
      const request = this._pending.get(frame.req_id);
      if (request && (frame.cmd === 'error' || frame.cmd === request.expect)) {
        this._pending.delete(frame.req_id);
        if (frame.cmd === 'error') {
          request.fail(new GroupPushError(String(frame.code), `${frame.code}: ${frame.reason}`, frame));
        } else {
          request.done(frame);
        }
        return;
      }
      // A late reply to a request that timed out.
      if (typeof frame.req_id === 'string' && frame.req_id.startsWith(this._prefix)) return;
      if (frame.cmd === 'error' && !('req_id' in frame) && typeof frame.code === 'string') {
        this._emit('error', new GroupPushError(frame.code, `${frame.code}: ${frame.reason}`, frame));
        return;
      }
      if (typeof frame.group_id === 'string' && this._positioned(frame)) return;
      if (typeof frame.group_id === 'string' && this._presence(frame)) return;
    }
    this._emit('message', null, text, {});
  }

  _entry(group) {
    return this._joining.get(group) || this._groups.get(group) || this._leaving.get(group);
  }

  _positioned(frame) {
    const entry = this._entry(frame.group_id);
    if (!entry || !entry.positioned || frame.cmd !== 'message') return false;
    const { offset, epoch, message } = frame;
    if (!Number.isInteger(offset) || typeof epoch !== 'string' || typeof message !== 'string') {
      return false;
    }
    const at = entry.position;
    // Already delivered (a recovery overlapping what arrived live): not twice.
    if (at && at.epoch === epoch && offset <= at.offset) return true;
    entry.position = { offset, epoch };
    this._emit('message', frame.group_id, message, { offset, epoch });
    return true;
  }

  _presence(frame) {
    const entry = this._entry(frame.group_id);
    if (!entry || !entry.presence || (frame.cmd !== 'join' && frame.cmd !== 'leave')) return false;
    if (typeof frame.client_id !== 'string') return false;
    const uid = frame.uid === undefined ? null : frame.uid;
    this._emit('presence', frame.group_id, { type: frame.cmd, clientId: frame.client_id, uid });
    return true;
  }
}
