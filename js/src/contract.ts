// Constants shared with the Python widget, imported from the one file both sides read
// (vit_explore/widget/contract.json; Python's loader is vit_explore/widget/_contract.py).
import contract from "../../vit_explore/widget/contract.json";

/** The raw-attention method: drawn here from the attention cache, with layer, head and query. */
export const ATTN: string = contract.attention_method;
/** Intervention modes, in button order. */
export const MODES: readonly string[] = contract.modes;
/** Kinds of the teaching requests (and of their answers). */
export const TEACHING_KINDS: ReadonlySet<string> = new Set(contract.teaching_kinds);
/** Panels a tour step may name. */
export const TOUR_PANELS: readonly string[] = contract.tour_panels;

function fill(template: string, values: Record<string, string | number>): string {
  return template.replace(/\{(\w+)\}/g, (_, k: string) => {
    if (!(k in values)) throw new Error(`contract.json key template needs "${k}"`);
    return String(values[k]);
  });
}

/** Key of a method's map (`target` null for a class-agnostic method), as Python's `_contract.map_key`. */
export function mapKey(image: number, method: string, target: number | null, paramsVersion: number): string {
  return fill(contract.map_key, { image, method, target: target === null ? contract.no_target : target, params_version: paramsVersion });
}

/** Key of a raw-attention view, as Python's `_contract.attention_view_key`. */
export function attentionViewKey(image: number, layer: number, head: number, query: number, paramsVersion: number): string {
  return fill(contract.attention_view_key, { image, method: ATTN, layer, head, query, params_version: paramsVersion });
}
