// Bundle the Explorer's (and the Atlas's) front end with esbuild.
//   node build.mjs            -> ../vit_explore/widget/static/{widget,atlas}.{js,css} (minified, every dependency inside)
//   node build.mjs --watch    -> same, with inline source maps, rebuilt on change (use with ANYWIDGET_HMR=1)
//   node build.mjs --tests    -> node_modules/.cache/vx-tests/*.test.mjs for `node --test`
import * as esbuild from "esbuild";
import { readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = new Set(process.argv.slice(2));

if (args.has("--tests")) {
  const out = join(here, "node_modules", ".cache", "vx-tests");
  rmSync(out, { recursive: true, force: true });
  const entries = readdirSync(join(here, "test"))
    .filter((f) => f.endsWith(".test.ts"))
    .map((f) => join(here, "test", f));
  await esbuild.build({
    entryPoints: entries,
    bundle: true,
    platform: "node",
    format: "esm",
    outdir: out,
    outExtension: { ".js": ".test.mjs" },
    entryNames: "[name]",
    logLevel: "warning",
  });
} else {
  const options = {
    entryPoints: { widget: join(here, "src", "index.ts"), atlas: join(here, "src", "atlas.ts") },
    bundle: true,
    format: "esm",
    target: ["es2020"],
    outdir: join(here, "..", "vit_explore", "widget", "static"),
    // UMD dependencies must not register with a page's requirejs (docs/frontend.md §1.4).
    define: { "define.amd": "false" },
    loader: { ".css": "css" },
    logLevel: "warning",
  };
  if (args.has("--watch")) {
    const ctx = await esbuild.context({ ...options, sourcemap: "inline" });
    await ctx.watch();
    console.log("watching js/src ...");
  } else {
    await esbuild.build({ ...options, minify: true });
  }
}
