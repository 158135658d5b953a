// Decoding the binary payloads sent by vit_explore/widget/_serialize.py (pure; unit-tested).

export type Bin = DataView | ArrayBuffer | ArrayBufferView;

type TypedCtor<T> = { new (buf: ArrayBuffer, off: number, len: number): T; BYTES_PER_ELEMENT: number };

/** The raw bytes of a DataView / typed array / ArrayBuffer, as a view (no copy). */
export function bytesOf(b: Bin): Uint8Array {
  if (b instanceof ArrayBuffer) return new Uint8Array(b);
  return new Uint8Array(b.buffer as ArrayBuffer, b.byteOffset, b.byteLength);
}

/**
 * A typed array over binary data, honouring byteOffset. JupyterLab hands every buffer its own
 * ArrayBuffer at offset 0, but other hosts may not: a misaligned view is copied first.
 */
export function typed<T>(b: Bin, ctor: TypedCtor<T>): T {
  const u8 = bytesOf(b);
  const size = ctor.BYTES_PER_ELEMENT;
  if (u8.byteLength % size !== 0) throw new Error(`buffer of ${u8.byteLength} bytes is not a whole number of ${size}-byte values`);
  if (u8.byteOffset % size === 0) return new ctor(u8.buffer as ArrayBuffer, u8.byteOffset, u8.byteLength / size);
  const copy = u8.slice(); // fresh buffer, offset 0
  return new ctor(copy.buffer, 0, copy.byteLength / size);
}

/** float16 (IEEE half, little-endian words) -> float32; fallback for hosts without Float16Array. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

export interface MapPayload {
  data: Bin;
  shape: number[];
  dtype?: string;
}

/** A dense float map (gh*gw) from {data, shape, dtype: "float32" | "float16"}. */
export function decodeMap(p: MapPayload): Float32Array {
  const n = p.shape.reduce((a, b) => a * b, 1);
  const dtype = p.dtype ?? "float32";
  let out: Float32Array;
  if (dtype === "float32") out = typed(p.data, Float32Array);
  else if (dtype === "float16") {
    const u16 = typed(p.data, Uint16Array);
    out = new Float32Array(u16.length);
    for (let i = 0; i < u16.length; i++) out[i] = halfToFloat(u16[i]);
  } else throw new Error(`unsupported map dtype ${dtype}`);
  if (out.length !== n) throw new Error(`map has ${out.length} values but shape ${p.shape.join("x")} needs ${n}`);
  return out;
}

/**
 * One block's attention, quantised per row: value(h, r, c) = data[h, r, c] / 255 * scales[h, r].
 * Rows: 0 is the read-out row (CLS), 1 + p is patch p's query row; columns are the patches.
 * Head index `heads - 1` holds the mean over heads when `hasMean` is set.
 */
export interface AttnLayer {
  heads: number;
  rows: number;
  cols: number;
  data: Uint8Array;
  scales: Float32Array;
}

export function makeAttnLayer(heads: number, rows: number, cols: number, data: Bin, scales: Bin): AttnLayer {
  const u8 = bytesOf(data);
  const sc = typed(scales, Float32Array);
  if (u8.length !== heads * rows * cols) throw new Error(`attention data has ${u8.length} bytes, expected ${heads}x${rows}x${cols}`);
  if (sc.length !== heads * rows) throw new Error(`attention scales have ${sc.length} values, expected ${heads}x${rows}`);
  return { heads, rows, cols, data: u8, scales: sc };
}

/** Dequantised row `row` of head `head`: (cols,) float32. */
export function attnRow(layer: AttnLayer, head: number, row: number, out?: Float32Array): Float32Array {
  if (head < 0 || head >= layer.heads) throw new Error(`head ${head} out of range 0..${layer.heads - 1}`);
  if (row < 0 || row >= layer.rows) throw new Error(`row ${row} out of range 0..${layer.rows - 1}`);
  const res = out ?? new Float32Array(layer.cols);
  const k = head * layer.rows + row;
  const s = layer.scales[k] / 255;
  const base = k * layer.cols;
  for (let c = 0; c < layer.cols; c++) res[c] = layer.data[base + c] * s;
  return res;
}

/** Base64 -> bytes (for the standalone HTML export, where no comm carries binary frames). */
export function fromBase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** [byte offset, byte length] of one array inside the exported binary blob. */
export type BlobRange = [number, number];

/** The exported binary blob: base64 text of gzip bytes -> the bytes (the browser's DecompressionStream). */
export async function gunzipBase64(text: string): Promise<ArrayBuffer> {
  const gz = fromBase64(text.trim());
  if (typeof DecompressionStream === "undefined") {
    throw new Error("this browser cannot read the export (no DecompressionStream); use a current Chrome, Firefox or Safari");
  }
  const stream = new Blob([gz as BlobPart]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(stream).arrayBuffer();
}

/** A view of `range` inside `blob`, checked against its length. */
export function blobView(blob: ArrayBuffer, range: BlobRange): DataView {
  const [at, n] = range;
  if (!(at >= 0 && n >= 0 && at + n <= blob.byteLength)) {
    throw new Error(`array [${at}, ${at + n}) lies outside the ${blob.byteLength}-byte export blob`);
  }
  return new DataView(blob, at, n);
}

/** Replace {"$b64": "..."} leaves by DataViews (how binary travels inside a standalone HTML file:
 *  the Explorer's and the Atlas's `to_html`). */
export function revive(v: any): any {
  if (Array.isArray(v)) return v.map(revive);
  if (v && typeof v === "object") {
    if (typeof v.$b64 === "string" && Object.keys(v).length === 1) {
      const b = fromBase64(v.$b64);
      return new DataView(b.buffer, b.byteOffset, b.byteLength);
    }
    const out: Record<string, any> = {};
    for (const [k, x] of Object.entries(v)) out[k] = revive(x);
    return out;
  }
  return v;
}
