// The widget model of a standalone page (no kernel): state, change events, recorded messages.
import type { AnyModel } from "@anywidget/types";

type Json = any;

/** A minimal in-memory model with the anywidget model API (`AnyModel<T>`), for the standalone pages
 *  (the Explorer's and the Atlas's `to_html`): there is no kernel, so `send` only records the message,
 *  and there is no widget manager to look other widgets up in. */
export class LocalModel<T extends Record<string, Json> = Record<string, Json>> implements AnyModel<T> {
  private state: T;
  private handlers = new Map<string, Set<(...a: any[]) => void>>();
  sent: unknown[] = [];
  readonly widget_manager = {
    get_model(): Promise<never> {
      return Promise.reject(new Error("a saved page has no widget manager: it holds this widget only"));
    },
  };
  constructor(state: T) {
    this.state = { ...state };
  }
  get<K extends keyof T>(key: K): T[K] {
    return this.state[key];
  }
  set<K extends keyof T>(key: K, value: T[K]): void {
    const old = this.state[key];
    this.state[key] = value;
    if (old !== value) this.emit(`change:${String(key)}`, value);
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
