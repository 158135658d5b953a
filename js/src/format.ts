// Number and file-name formatting shared by the view and the PNG export (pure; test/format.test.ts).

/** A probability or score with `d` decimals; "–" when missing. A value that rounds to zero reads "0.000", never "-0.000". */
export function fmt(p: number | undefined | null, d = 3): string {
  if (p === undefined || p === null || !Number.isFinite(p)) return "–";
  const s = p.toFixed(d);
  return /^-0\.?0*$/.test(s) ? s.slice(1) : s;
}

/** A signed difference with an explicit sign ("+0.120", "−0.031"); zero reads "+0.000". */
export function signedFmt(p: number | undefined | null, d = 3): string {
  if (p === undefined || p === null || !Number.isFinite(p)) return "–";
  const s = fmt(Math.abs(p), d);
  return (p < 0 && s !== fmt(0, d) ? "−" : "+") + s;
}

/** A file-name-safe slug of a user string (class names may hold anything). */
export function slug(text: string): string {
  const s = text.normalize("NFKD").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[-.]+|[-.]+$/g, "");
  return (s || "x").slice(0, 60);
}

/** The name of a PNG export: what is on screen (image number as shown, method, class). */
export function exportName(imageNumber: number, method: string, className: string | null): string {
  return `vit-explore_image${imageNumber}_${slug(method)}${className === null ? "" : `_${slug(className)}`}.png`;
}
