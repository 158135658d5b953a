// Brush geometry: pointer positions -> patch indices (pure; unit-tested).

export interface Grid {
  gh: number; // rows
  gw: number; // columns
  width: number; // drawn size of the image in CSS pixels
  height: number;
}

/** Row-major patch index under (x, y) in CSS pixels relative to the image's top-left, or -1 outside. */
export function cellAt(g: Grid, x: number, y: number): number {
  if (!(x >= 0 && y >= 0 && x < g.width && y < g.height)) return -1;
  const col = Math.min(g.gw - 1, Math.floor((x / g.width) * g.gw));
  const row = Math.min(g.gh - 1, Math.floor((y / g.height) * g.gh));
  return row * g.gw + col;
}

/**
 * Every cell the straight segment (x0, y0) -> (x1, y1) passes through, in order, without
 * duplicates (fast pointer moves skip pixels; the stroke must not have gaps). Exact grid
 * traversal (Amanatides & Woo): each step crosses one vertical or horizontal cell border.
 */
export function cellsOnSegment(g: Grid, x0: number, y0: number, x1: number, y1: number): number[] {
  const cw = g.width / g.gw;
  const ch = g.height / g.gh;
  // clip the segment to the image by sampling (cheap and enough: the grid is small)
  const out: number[] = [];
  const push = (i: number) => {
    if (i >= 0 && out[out.length - 1] !== i && !out.includes(i)) out.push(i);
  };
  const inside = (x: number, y: number) => x >= 0 && y >= 0 && x < g.width && y < g.height;
  if (inside(x0, y0) && inside(x1, y1)) {
    let col = Math.min(g.gw - 1, Math.floor(x0 / cw));
    let row = Math.min(g.gh - 1, Math.floor(y0 / ch));
    const endCol = Math.min(g.gw - 1, Math.floor(x1 / cw));
    const endRow = Math.min(g.gh - 1, Math.floor(y1 / ch));
    const dx = x1 - x0;
    const dy = y1 - y0;
    const stepC = dx > 0 ? 1 : -1;
    const stepR = dy > 0 ? 1 : -1;
    const tDeltaX = dx !== 0 ? Math.abs(cw / dx) : Infinity;
    const tDeltaY = dy !== 0 ? Math.abs(ch / dy) : Infinity;
    let tMaxX = dx !== 0 ? ((stepC > 0 ? (col + 1) * cw : col * cw) - x0) / dx : Infinity;
    let tMaxY = dy !== 0 ? ((stepR > 0 ? (row + 1) * ch : row * ch) - y0) / dy : Infinity;
    push(row * g.gw + col);
    let guard = g.gw + g.gh + 2;
    while ((col !== endCol || row !== endRow) && guard-- > 0) {
      if (tMaxX < tMaxY) {
        col += stepC;
        tMaxX += tDeltaX;
      } else {
        row += stepR;
        tMaxY += tDeltaY;
      }
      if (col < 0 || row < 0 || col >= g.gw || row >= g.gh) break;
      push(row * g.gw + col);
    }
    return out;
  }
  // one or both ends outside the image: sample densely and keep the cells inside
  const len = Math.hypot(x1 - x0, y1 - y0);
  const n = Math.max(1, Math.ceil(len / (Math.min(cw, ch) / 4)));
  for (let i = 0; i <= n; i++) push(cellAt(g, x0 + ((x1 - x0) * i) / n, y0 + ((y1 - y0) * i) / n));
  return out;
}

/** Apply a stroke's cells to a selection: add them, or remove them when erasing. Returns a new set. */
export function applyStroke(sel: Iterable<number>, cells: Iterable<number>, erase: boolean): Set<number> {
  const out = new Set(sel);
  for (const c of cells) {
    if (erase) out.delete(c);
    else out.add(c);
  }
  return out;
}

/** Sorted array of a selection (the wire format of `brushed`). */
export function sortedCells(sel: Iterable<number>): number[] {
  return Array.from(new Set(sel)).sort((a, b) => a - b);
}

/** Keyboard patch cursor: arrows move one cell (clamped), Home/End jump within the row. */
export function moveCursor(index: number, key: string, gh: number, gw: number): number {
  let row = Math.floor(index / gw);
  let col = index % gw;
  if (key === "ArrowLeft") col = Math.max(0, col - 1);
  else if (key === "ArrowRight") col = Math.min(gw - 1, col + 1);
  else if (key === "ArrowUp") row = Math.max(0, row - 1);
  else if (key === "ArrowDown") row = Math.min(gh - 1, row + 1);
  else if (key === "Home") col = 0;
  else if (key === "End") col = gw - 1;
  return row * gw + col;
}

/** Cells of the rectangle spanned by two patch indices (Shift+arrows extends a selection). */
export function rectCells(a: number, b: number, gw: number): number[] {
  const r0 = Math.min(Math.floor(a / gw), Math.floor(b / gw));
  const r1 = Math.max(Math.floor(a / gw), Math.floor(b / gw));
  const c0 = Math.min(a % gw, b % gw);
  const c1 = Math.max(a % gw, b % gw);
  const out: number[] = [];
  for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) out.push(r * gw + c);
  return out;
}

/** Text of a patch for read-outs: "patch 37 (row 3, col 1)". */
export function describeCell(index: number, gw: number): string {
  return `patch ${index} (row ${Math.floor(index / gw)}, col ${index % gw})`;
}
