// anywidget 0.11 front-end module (AFM) of vit_explore's Explorer, plus a standalone host shim
// used by Explorer.to_html() (no Jupyter, no network: state and attention are embedded).
import "./styles.css";
import { type BlobRange, blobView, revive } from "./decode";
import { LocalModel } from "./local_model";
import { dropStore, handleAttnMessage, storeFor, type AttnMessage } from "./store";
import type { Traits } from "./traits";
import { renderView, type DebugInfo, type Model } from "./view";

export { LocalModel };

export { gunzipBase64 } from "./decode";

declare global {
  interface Window {
    __vx?: { views: { uid: string; el: HTMLElement; debug: DebugInfo; model: Model }[] };
  }
}

function register(uid: string, el: HTMLElement, debug: DebugInfo, model: Model, signal: AbortSignal) {
  const reg = (window.__vx ??= { views: [] });
  const entry = { uid, el, debug, model };
  reg.views.push(entry);
  signal.addEventListener("abort", () => {
    reg.views = reg.views.filter((v) => v !== entry);
  });
}

function requestMissing(model: Model): void {
  const store = storeFor(model.get("_uid"));
  const img = model.get("image_index");
  const nl = model.get("num_layers");
  if (model.get("offline")) return;
  const missing = store.missingLayers(img, nl);
  if (missing.length === 0) return;
  const key = img;
  if (store.requested.has(key)) return;
  store.requested.add(key);
  model.send({ kind: "attn_request", image_index: img, first_layer: model.get("layer"), layers: missing });
}

function initialize({ model, signal }: { model: Model; signal?: AbortSignal }) {
  const uid = model.get("_uid");
  const store = storeFor(uid);
  const onMsg = (msg: { kind?: string }, buffers: DataView[]) => {
    if (msg?.kind === "attn") {
      handleAttnMessage(store, msg as AttnMessage, buffers);
      store.emit();
    } else if (msg?.kind === "attn_reset") {
      // the Python side recomputed (e.g. a new set of images): forget what we had
      store.attn.clear();
      store.requested.clear();
      requestMissing(model);
    }
  };
  model.on("msg:custom", onMsg);
  const onImage = () => requestMissing(model);
  model.on("change:image_index", onImage);
  requestMissing(model);
  const cleanup = () => {
    model.off("msg:custom", onMsg);
    model.off("change:image_index", onImage);
    dropStore(uid);
  };
  signal?.addEventListener("abort", cleanup);
  return cleanup;
}

function render({ model, el, signal }: { model: Model; el: HTMLElement; signal?: AbortSignal }) {
  const ctrl = new AbortController();
  signal?.addEventListener("abort", () => ctrl.abort());
  const uid = model.get("_uid");
  const debug = renderView(model, el, storeFor(uid), ctrl.signal);
  register(uid, el, debug, model, ctrl.signal);
  // asking here too covers a view re-rendered after the stack was dropped
  requestMissing(model);
  return () => ctrl.abort();
}

export default { initialize, render };

// ---------------------------------------------------------------- standalone (to_html)

type Json = any;


export interface StandaloneData {
  state: Record<string, Json>;
  attn: { image_index: number; layer: number; num_layers: number; heads: number; rows: number; cols: number; data: BlobRange; scales: BlobRange }[];
  maps: { key: string; data: BlobRange; shape: number[]; dtype: string; signed: boolean }[];
}

/** Mount an Explorer from exported data into `el` (used by the HTML written by Explorer.to_html()). */
export function mountStandalone(el: HTMLElement, data: StandaloneData, blob: ArrayBuffer): LocalModel<Traits> {
  const model = new LocalModel<Traits>(revive({ ...data.state, offline: true }) as Traits);
  const uid = model.get("_uid");
  const store = storeFor(uid);
  for (const a of data.attn) {
    handleAttnMessage(store, { kind: "attn", ...a }, [blobView(blob, a.data), blobView(blob, a.scales)]);
  }
  for (const m of data.maps) {
    store.putMapPayload({ key: m.key, data: blobView(blob, m.data), shape: m.shape, dtype: m.dtype, signed: m.signed });
  }
  const ctrl = new AbortController();
  initialize({ model, signal: ctrl.signal });
  render({ model, el, signal: ctrl.signal });
  return model;
}
