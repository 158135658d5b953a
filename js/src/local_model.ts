// The widget model of a standalone page (no kernel): state, change events, recorded messages.

type Json = any;

/** A minimal in-memory model with the anywidget model API, for the standalone pages (the Explorer's
 *  and the Atlas's `to_html`): there is no kernel, so `send` only records the message. */
export class LocalModel {
  private state: Record<string, Json>;
  private handlers = new Map<string, Set<(...a: any[]) => void>>();
  sent: unknown[] = [];
  constructor(state: Record<string, Json>) {
    this.state = { ...state };
  }
  get(key: string) {
    return this.state[key];
  }
  set(key: string, value: unknown) {
    const old = this.state[key];
    this.state[key] = value;
    if (old !== value) this.emit(`change:${key}`, value);
  }
  save_changes() {}
  on(ev: string, cb: (...a: any[]) => void) {
    if (!this.handlers.has(ev)) this.handlers.set(ev, new Set());
    this.handlers.get(ev)!.add(cb);
  }
  off(ev?: string | null, cb?: ((...a: any[]) => void) | null) {
    if (!ev) this.handlers.clear();
    else if (!cb) this.handlers.delete(ev);
    else this.handlers.get(ev)?.delete(cb);
  }
  send(content: unknown) {
    this.sent.push(content);
  }
  emit(ev: string, ...args: unknown[]) {
    for (const cb of Array.from(this.handlers.get(ev) ?? [])) cb(...args);
  }
}
