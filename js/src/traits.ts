// The Explorer's synced traits, typed: `Model` is anywidget's `AnyModel<Traits>`, so a misspelt trait
// name (or a value of the wrong type) fails `npm run typecheck`. The keys must equal the Python
// Explorer's synced traits (tests/widget/test_traits_contract.py parses this interface and compares).
import type { AnyModel } from "@anywidget/types";
import type { MapPayload } from "./decode";
import type { ImagePayload } from "./rgb_canvas";

export interface ClassProb {
  index: number;
  name: string;
  prob: number;
}

export interface MethodInfo {
  class_specific?: boolean;
  label?: string;
  about?: string;
}

export interface StatusPayload {
  busy?: boolean;
  label?: string;
  error?: string | null;
}

export interface Intervention {
  id?: number;
  image_index?: number;
  patches?: number[];
  mode?: string;
  keep?: boolean;
  target?: number;
  target_name?: string;
  before?: ClassProb[];
  after?: ClassProb[];
  target_before?: number;
  target_after?: number;
  delta?: number;
  causal_score?: number | null;
  new_top?: ClassProb;
  ms?: number;
  error?: string;
}

export interface CurvesPayload {
  key?: string;
  pending?: boolean;
  error?: string;
  label?: string;
  target_name?: string;
  x?: number[];
  deletion?: number[];
  insertion?: number[];
  auc_deletion?: number;
  auc_insertion?: number;
  step?: number;
  patches?: number;
}

export interface CounterfactualPayload {
  image_index?: number;
  found?: boolean;
  patches?: number[];
  tried?: number;
  mode?: string;
  order_by?: string;
  target_name?: string;
  target_before?: number;
  target_after?: number;
  new_name?: string | null;
  new_prob?: number | null;
}

export interface MasksPayload {
  key?: string;
  K?: number;
  height?: number;
  width?: number;
  data?: DataView;
  scores?: number[];
}

export type MapMessage = Partial<MapPayload> & { key?: string; signed?: boolean; error?: string };
export type TilePayload = MapPayload & { key: string; method: string; signed?: boolean; pending?: boolean; error?: string };

export type IntervenedMap = Partial<MapPayload> & {
  key?: string;
  label?: string;
  image_index?: number;
  patches?: number[];
  mode?: string;
  keep?: boolean;
  target?: number;
  signed?: boolean;
  image?: ImagePayload;
  error?: string;
};

export interface TourStep {
  title?: string;
  text?: string;
  method?: string;
  layer?: number;
  head?: number;
  query?: number;
  opacity?: number;
  show_grid?: boolean;
  panel?: string;
}

/** Every synced trait of vit_explore.widget.Explorer (Python: traitlets `.tag(sync=True)`). */
export interface Traits {
  _uid: string;
  title: string;
  methods: string[];
  method_info: Record<string, MethodInfo>;
  num_layers: number;
  num_heads: number;
  token_attention: boolean;
  grid: number[];
  num_images: number;
  class_names: string[];
  method: string;
  layer: number;
  head: number;
  query: number;
  target: number;
  pinned: boolean;
  image_index: number;
  opacity: number;
  colormap: string;
  show_grid: boolean;
  smooth: boolean;
  brushed: number[];
  mode: string;
  keep: boolean;
  image: Partial<ImagePayload>; // {} until the first image is sent
  topk: ClassProb[];
  map_payload: MapMessage;
  params_version: number;
  intervention: Intervention;
  status: StatusPayload;
  offline: boolean;
  compare: boolean;
  compare_methods: string[];
  compare_payload: TilePayload[];
  curves: CurvesPayload;
  cx_masks: MasksPayload;
  cx_mask: number;
  recompute: boolean;
  intervened_map: IntervenedMap;
  counterfactual: CounterfactualPayload;
  tour: TourStep[];
  tour_step: number;
}

/** The Explorer's model: anywidget's, or the standalone page's LocalModel (same API). */
export type Model = AnyModel<Traits>;
