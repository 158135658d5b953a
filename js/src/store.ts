// Per-widget front-end state shared by initialize() and every render(): the attention cache
// (filled by custom messages, never a saved trait) and the cache of method maps already seen.
import { AttnLayer, decodeMap, makeAttnLayer, MapPayload } from "./decode";

export interface CachedMap {
  values: Float32Array;
  signed: boolean;
  shape: number[];
}

export class Store {
  /** image index -> per-layer attention (undefined until that layer arrives). */
  attn = new Map<number, (AttnLayer | undefined)[]>();
  /** key `${image}|${method}|${target or -}|${paramsVersion}` -> map. */
  maps = new Map<string, CachedMap>();
  private listeners = new Set<() => void>();
  /** images whose stack was asked for (so a second view does not ask again). */
  requested = new Set<number>();

  onChange(cb: () => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  emit(): void {
    for (const cb of this.listeners) cb();
  }

  putAttn(image: number, layer: number, numLayers: number, l: AttnLayer): void {
    let arr = this.attn.get(image);
    if (!arr || arr.length !== numLayers) {
      arr = new Array(numLayers).fill(undefined);
      this.attn.set(image, arr);
    }
    arr[layer] = l;
  }

  getAttn(image: number, layer: number): AttnLayer | undefined {
    return this.attn.get(image)?.[layer];
  }

  /** Layers of `image` still missing (all when nothing arrived). */
  missingLayers(image: number, numLayers: number): number[] {
    const arr = this.attn.get(image);
    const out: number[] = [];
    for (let l = 0; l < numLayers; l++) if (!arr?.[l]) out.push(l);
    return out;
  }

  putMapPayload(p: MapPayload & { key: string; signed: boolean }): CachedMap {
    const hit = this.maps.get(p.key);
    if (hit) return hit;
    const m = { values: decodeMap(p), signed: !!p.signed, shape: p.shape };
    this.maps.set(p.key, m);
    return m;
  }
}

/** Message from Python carrying one block's quantised attention. */
export interface AttnMessage {
  kind: "attn";
  image_index: number;
  layer: number;
  num_layers: number;
  heads: number;
  rows: number;
  cols: number;
}

export function handleAttnMessage(store: Store, msg: AttnMessage, buffers: ArrayLike<DataView | ArrayBuffer>): void {
  const layer = makeAttnLayer(msg.heads, msg.rows, msg.cols, buffers[0], buffers[1]);
  store.putAttn(msg.image_index, msg.layer, msg.num_layers, layer);
}

const STORES = new Map<string, Store>();

/** The store of the widget with this uid (one per Python widget, shared by its views). */
export function storeFor(uid: string): Store {
  let s = STORES.get(uid);
  if (!s) {
    s = new Store();
    STORES.set(uid, s);
  }
  return s;
}

export function dropStore(uid: string): void {
  STORES.delete(uid);
}
