"""Write the five notebooks of this folder, without outputs: ``python notebooks/_make_notebooks.py``.

The notebooks are authored here as Python strings so that they are reviewed as code; the
``.ipynb`` files are generated from this script and committed without outputs
(``tests/test_notebooks.py`` executes every one of them headless). Edit this file, not the
``.ipynb`` files, and run it again.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

Cell = tuple  # (kind, source, metadata)


def md(text: str) -> Cell:
    return ("md", text, {})


def code(text: str) -> Cell:
    return ("code", text, {})


def answer(text: str) -> Cell:
    """A code cell whose source and output start collapsed (JupyterLab, Notebook 7): the
    answer to the exercise above it, computed when the notebook runs."""
    return ("code", text, {"jupyter": {"source_hidden": True, "outputs_hidden": True}, "tags": ["answer"]})


# Overlay helper shared by the notebooks (defined in each, so every notebook stands alone).
OVERLAY_HELPER = r'''
def overlay_tiles(model, x, explanations, index=0):
    """One overlay per Explanation for image `index` of `x` (signed maps get the diverging colormap)."""
    image = viz.to_uint8_image(model, x[index])
    tiles = []
    for ex in explanations:
        heat = ex[index].heatmap(normalize="none")[0].numpy()
        signed = bool((ex[index].patch_map < 0).any())
        tiles.append(viz.overlay(image, heat, cmap="RdBu" if signed else "inferno", alpha=0.6, signed=signed))
    return tiles
'''

# --------------------------------------------------------------------------- 01 tour

TOUR = [
    md(r'''
# A tour of vit_explore

`vit_explore` shows what a timm Vision Transformer looks at when it classifies an image, and
checks whether that is *why* it decided: fifteen explanation methods behind one function
(`vx.explain`), an interactive widget to scrub through layers and heads and to brush patches
out of the image (`vx.Explorer`), interventions that measure what the model predicts without a
region (`vx.intervene`), and metrics against ground truth (`vit_explore.metrics`). This notebook
runs offline on the embedded model `toy-shapes`: a small ViT (4 blocks, 4 heads, 96 px images
cut into 12 x 12 patches of 8 px) trained on synthetic images of five shapes, generated in code,
so that for every image we know which pixels make the label. The other notebooks go further:
`02_workshop` teaches the methods, `03_spurious_correlations` catches a model that learned a
shortcut, `04_your_model` runs the same workflow on any timm ViT and your own images, and
`05_evaluation` scores the methods.
'''),
    code(r'''
import time

import numpy as np
import torch

import vit_explore as vx
from vit_explore import viz
from vit_explore.datasets import make_preset
from vit_explore.zoo import class_names, load_model
'''),
    md(r'''
## The embedded model

`load_model("toy-shapes")` rebuilds the model from the weights shipped inside the package; no
network is needed. It is a plain timm `VisionTransformer`, in eval mode.
'''),
    code(r'''
model = load_model("toy-shapes")
names = class_names(model)
print(type(model).__module__ + "." + type(model).__name__)
print("blocks:", len(model.blocks), "| heads:", model.blocks[0].attn.num_heads,
      "| input:", model.pretrained_cfg["input_size"], "| patch:", model.patch_embed.patch_size)
print("classes:", names)
print("parameters:", sum(p.numel() for p in model.parameters()))
'''),
    md(r'''
## One synthetic image, with its ground truth

`make_preset("shapes", n)` draws the standard test images (a fixed seed, so every run shows the
same ones). Each image has one large *class object* whose shape is the label, up to three small
*distractor* shapes that never decide it, and a textured background. The masks tell which pixels
are which.
'''),
    code(r'''
data = make_preset("shapes", n=4)
i = 0
image = data.images[i]                      # (96, 96, 3) uint8
print("label:", names[data.labels[i]], "| object covers", f"{data.object_mask[i].mean():.1%}", "of the pixels",
      "| distractors:", int(data.n_distractors[i]))
obj = viz.overlay(image, data.object_mask[i].astype(float), cmap="gray", alpha=0.5)
dis = viz.overlay(image, data.distractor_mask[i].astype(float), cmap="gray", alpha=0.5)
viz.show(viz.grid([image, obj, dis], ["image", "object mask", "distractor mask"], scale=2))
'''),
    md(r'''
`vx.preprocess` applies the model's own data config (size, mean, std); `vx.explain` also accepts
the uint8 array or a PIL image directly and preprocesses it the same way.
'''),
    code(r'''
x = vx.preprocess(model, image)             # (1, 3, 96, 96), normalised
with torch.no_grad():
    probs = model(x).softmax(-1)[0]
for c in probs.argsort(descending=True)[:3].tolist():
    print(f"{names[c]:>9s}  {probs[c]:.3f}")
'''),
    md(r'''
## Every method on this image

`vx.list_methods()` names every registered explainer; `vx.get_explainer(name)` gives its paper,
its reference implementation and its parameters. All of them return the same `Explanation`:
`patch_map` (B, 12, 12) as the reference algorithm computes it, the explained `target`, the
`logits`, and `heatmap()` to upsample it.

Three methods are sampling or path integrals whose defaults are heavier than this tour needs:
RISE (`n_masks=6000`), TAM (`steps=20`) and integrated gradients (`steps=32`). We pass cheaper
values here (`FAST`); use the defaults when you want the reference's settings.
'''),
    code(r'''
for m in vx.list_methods():
    spec = vx.get_explainer(m)
    print(f"{m:22s} {'class-specific' if spec.class_specific else 'class-agnostic':15s} {spec.paper[:70]}")
'''),
    code(r'''
FAST = {"rise": {"n_masks": 400}, "tam": {"steps": 10}, "integrated_gradients": {"steps": 16}}

explanations, seconds = {}, {}
for m in vx.list_methods():
    t0 = time.perf_counter()
    explanations[m] = vx.explain(model, x, m, **FAST.get(m, {}))
    seconds[m] = time.perf_counter() - t0

# share of the map's positive relevance that falls on the class object (1.0 = all of it)
on_object = {m: float(vx.metrics.relevance_mass(ex.patch_map, data.object_mask[i:i + 1])[0])
             for m, ex in explanations.items()}
print(f"the object covers {data.object_mask[i].mean():.3f} of the image: a uniform map scores that")
for m, ex in explanations.items():
    print(f"{m:22s} target={names[int(ex.target)]:9s} mass on object={on_object[m]:.3f}  {seconds[m]:6.2f} s")
'''),
    code(OVERLAY_HELPER + r'''
tiles = [image] + overlay_tiles(model, x, list(explanations.values()))
titles = ["input"] + list(explanations)
viz.show(viz.grid(tiles, titles, scale=2, columns=4))
'''),
    md(r'''
Signed maps (gradients, LRP variants that keep negative evidence) are drawn with a diverging
colormap: red for evidence for the class, blue against, white for zero. The rest use `inferno`.

## The Explorer

`vx.Explorer(model, images)` opens the interactive view. In JupyterLab you can:
scrub layers and heads with the sliders (or the arrow keys) and click a head thumbnail; click a
patch to see *its* attention row instead of the CLS row; switch methods; click a class in the
prediction panel to explain that class instead; and drag over patches to **brush** them: the
model is rerun without them and the panel shows the new probabilities beside the old ones.
'''),
    code(r'''
images = [data.images[j] for j in range(len(data))]
explorer = vx.Explorer(model, images, params=FAST, title="toy-shapes: the tour")
explorer
'''),
    md(r'''
## Reading back what you selected

Everything you do in the widget is state that Python can read (and set). Interact with the
widget above, then run the next cell: it prints your selection. (Run top to bottom without
touching the widget, it prints the initial state: the raw attention of the last block, mean of
the heads, the top-1 class of the first image, nothing brushed.)
'''),
    code(r'''
print("method:", explorer.method)
print("layer:", explorer.layer, "| head:", "mean of heads" if explorer.head == -1 else explorer.head,
      "| query:", "CLS row" if explorer.query == -1 else f"patch {explorer.query}")
print("target:", explorer.target, names[explorer.target], "| image:", explorer.image_index)
print("brushed patches (row-major):", explorer.brushed)
'''),
    md(r'''
The same state can be set from Python, which is how a notebook drives the widget. Here we
choose Chefer's LRP, and brush the patches the class object covers at least half of; the
intervention runs in the background (`explorer.wait()` blocks until it is done), and its result
is in `explorer.intervention`.
'''),
    code(r'''
object_patches = np.flatnonzero(data.patch_mask("object")[0]).tolist()
explorer.method = "chefer_lrp"
explorer.brushed = object_patches
assert explorer.wait(120)
iv = explorer.intervention
print(f"brushed {len(iv['patches'])} patches in mode {iv['mode']!r}")
print(f"p({iv['target_name']}) before {iv['target_before']:.3f}  after {iv['target_after']:.3f}  "
      f"(change {iv['delta']:+.3f}); top-1 now: {iv['new_top']['name']} ({iv['new_top']['prob']:.3f})")
print("ViT-CX causal score of the region:", round(iv["causal_score"], 3))
'''),
    md(r'''
`explorer.explanation` is the `Explanation` behind the current view, the same object
`vx.explain` returns, so whatever you found in the widget can be used in code:
'''),
    code(r'''
current = explorer.explanation
same = vx.explain(model, x, "chefer_lrp", target=explorer.target)
print(current.method, tuple(current.patch_map.shape), "target", names[int(current.target)])
print("identical to vx.explain(...):", torch.allclose(current.patch_map, same.patch_map))
viz.show(viz.grid([image] + overlay_tiles(model, x, [current]), ["input", "explorer.explanation"], scale=2))
'''),
    md(r'''
`explorer.figure()` returns the prediction chart as a static plotly figure (before and after the
brushed intervention), and `explorer.to_html(path)` writes the whole Explorer as one HTML file
that works offline, without a kernel, with the maps computed so far.
'''),
    code(r'''
explorer.figure()
'''),
    code(r'''
import tempfile
from pathlib import Path

out = Path(tempfile.mkdtemp()) / "tour_explorer.html"
explorer.to_html(out)
print(out, f"{out.stat().st_size / 1e6:.1f} MB")
'''),
    md(r'''
## Where next

* `02_workshop.ipynb`: an hour on what attention is, why it is not an explanation, gradients and
  relevance, and causes, with exercises.
* `03_spurious_correlations.ipynb`: a model that learned a shortcut, caught by the explainers and
  by brushing.
* `04_your_model.ipynb`: any timm ViT (DeiT distilled, registers, average pooling), your own
  images and checkpoints.
* `05_evaluation.ipynb`: the evaluation protocol and the benchmark.
'''),
]

# --------------------------------------------------------------------------- 02 workshop

WORKSHOP = [
    md(r'''
# Workshop: what a Vision Transformer looks at, and why it decides

About an hour. We use the embedded `toy-shapes` model (4 blocks of 4 heads, 12 x 12 patches)
on synthetic images where we *know* the answer: the class is the shape of the one large object;
the small shapes (distractors) and the background never decide it. Every statement below is
printed or asserted by a cell you run; when the text says "larger" the number is right above it.

1. Self-attention: what a head sees
2. Why raw attention is not an explanation: rollout and attention flow
3. Gradients and relevance: Chefer's LRP, AG-CAM, TAM
4. Causes: brushing patches out, ViT-CX, counterfactuals

Exercises are marked **Exercise**; their answers are in the collapsed cell below each one
(click the bar on its left to expand it). Try first.
'''),
    code(r'''
import numpy as np
import torch

import vit_explore as vx
from vit_explore import viz
from vit_explore.datasets import make_preset
from vit_explore.metrics import deletion, relevance_mass
from vit_explore.zoo import class_names, load_model

model = load_model("toy-shapes")
names = class_names(model)
N = 6                                       # images used for the statistics (more = firmer numbers, slower)
data = make_preset("shapes", n=N)
x = vx.preprocess(model, list(data.images))
obj = torch.from_numpy(data.object_mask)    # (N, 96, 96) bool: the pixels of the class object
with torch.no_grad():
    pred = model(x).argmax(-1)
print("accuracy on these", N, "images:", (pred.numpy() == data.labels).mean())
print("object area share per image:", np.round(data.object_mask.mean((1, 2)), 3))
'''),
    code(OVERLAY_HELPER),
    md(r'''
## 1. Self-attention: what a head sees

The image is cut into 144 patches; each becomes a token, and a learned **CLS** token is put in
front: 145 tokens. In every block, each head computes for every token (the *query*) a probability
distribution over all tokens (the *keys*):
$A = \mathrm{softmax}(QK^\top/\sqrt{d})$, one row per query, each row summing to 1, and the
token's update is the $A$-weighted sum of the values. The classifier reads the CLS token after
the last block, so the **CLS row** of a block's attention says which tokens the CLS token gathered
from in that block.

`vx.capture` runs the model once and records what we ask for:
'''),
    code(r'''
trace = vx.capture(model, x, vx.Needs(attn=True))
A = trace.attn_at(-1)                       # last block: (B, heads, 145, 145)
print("attention of the last block:", tuple(A.shape))
print("every row sums to 1:", torch.allclose(A.sum(-1), torch.ones(A.shape[:-1]), atol=1e-5))
for l in range(trace.num_layers):
    cls_row = trace.attn_at(l)[:, :, 0]     # (B, heads, 145): the CLS token's row
    print(f"block {l}: CLS attends to itself with {cls_row[..., 0].mean():.3f} of its attention, "
          f"to the 144 patches with {cls_row[..., 1:].sum(-1).mean():.3f} (mean over heads and images)")
'''),
    md(r'''
`vx.attention_maps(model, x)` gives the CLS row of every block and head on the patch grid,
`(B, blocks, heads, 12, 12)`. Below: image 0, one row per block, one column per head.
'''),
    code(r'''
maps = vx.attention_maps(model, x)
B, L, H, gh, gw = maps.shape
print(tuple(maps.shape))
img0 = viz.to_uint8_image(model, x[0])
up = torch.nn.functional.interpolate(maps[0].reshape(L * H, 1, gh, gw), size=img0.shape[:2], mode="nearest")[:, 0]
tiles = [viz.overlay(img0, m.numpy(), alpha=0.6) for m in up]
viz.show(viz.grid(tiles, [f"block {l} head {h}" for l in range(L) for h in range(H)], scale=1, columns=H))
'''),
    md(r'''
Do the heads of one block look at the same places? One way to put a number on it: the Pearson
correlation between two heads' CLS maps of the same image (1 = the same map up to scale),
averaged over head pairs and images; and the share of each head's attention that lands on the
class object.
'''),
    code(r'''
def head_similarity(m):                     # m: (B, heads, P)
    z = (m - m.mean(-1, keepdim=True)) / (m.std(-1, keepdim=True) + 1e-12)
    c = torch.einsum("bhp,bkp->bhk", z, z) / (m.shape[-1] - 1)
    off = ~torch.eye(m.shape[1], dtype=torch.bool)
    return c[:, off].mean().item()

head_mass = torch.stack([torch.stack([relevance_mass(maps[:, l, h], obj) for h in range(H)], 1) for l in range(L)], 1)
# head_mass: (B, blocks, heads), share of the CLS attention (over patches) on the object
for l in range(L):
    print(f"block {l}: mean correlation between heads {head_similarity(maps[:, l].flatten(2)):+.2f} | "
          "object share per head", np.round(head_mass[:, l].mean(0).numpy(), 3))
print("object area share (what a uniform map gets):", round(float(obj.double().mean()), 3))
'''),
    md(r'''
Scrub through them yourself: in the Explorer below, move the **layer** and **head** sliders (or
use the arrow keys), click a head thumbnail, and click a patch to see what *that* patch attends
to instead of the CLS token. Then switch between the methods of the next sections.

The Explorer carries a **guided tour** (`tour="default"`): press **Next** (or `n`; `b` goes
back) to walk from the patches, through the embedding and the attention of the first, a middle
and the last block, to the read-out and the class. Each step sets the views and shows one short
text. A tour is a list of dicts, so you can write your own: `vx.Explorer(..., tour=[{"title":
..., "text": ..., "layer": "middle", "panel": "lens"}, ...])`. Below the tour, four teaching
views: the **logit lens**, token **similarity**, **head attribution** (switch heads off) and
**patching** (copy patches' tokens from another image).
'''),
    code(r'''
explorer = vx.Explorer(
    model, x[:4],
    methods=["raw_attention", "rollout", "attention_flow", "chefer_lrp", "ag_cam", "tam", "vit_cx"],
    params={"tam": {"steps": 10}},
    title="workshop",
    tour="default",
)
print([step["title"] for step in explorer.tour])
explorer
'''),
    md(r'''
### The residual stream, block by block

The views of the tour are functions you can call. The **logit lens** applies the model's own
final norm and head to the stream after every block; after the last block it *is* the model's
output. **Head attribution** splits the class logit into one direct term per head (with the final
LayerNorm's scale frozen at its value on this image, as ViT Prisma and TransformerLens do) and
also measures what switching each head off does. **Activation patching** runs one image with some
tokens taken from another: all tokens at block 0 carry the other image's prediction.
'''),
    code(r'''
lens = vx.logit_lens(model, x[:2])
with torch.no_grad():
    print("last block's read-out equals the logits:", torch.allclose(lens.readout[:, -1], model(x[:2]), atol=1e-5))
p = lens.probs[0, :, int(pred[0])]
print(f"P({names[int(pred[0])]}) of image 0 after each block:", np.round(p.numpy(), 3))

ha = vx.head_attribution(model, x[:1])
print("direct terms add up to the logit:", round(float(ha.reconstruction()[0]), 4), "=", round(float(ha.logit[0]), 4))
l, h = divmod(int(ha.ablation[0].argmin()), ha.ablation.shape[-1])
print(f"switching off block {l} head {h} alone costs the most: P changes by {float(ha.ablation[0, l, h]):+.3f}")

src = int((pred != pred[0]).nonzero()[0]) if bool((pred != pred[0]).any()) else 1
patched = vx.patch_activations(model, x[src:src + 1], x[:1], 0)
print(f"image 0 with every token of image {src} at block 0 predicts {names[int(patched.argmax())]}"
      f" (image {src} is predicted {names[int(pred[src])]})")
'''),
    md(r'''
**Exercise 1.** Which head of the *last* block puts the largest share of its CLS attention on
the class object, averaged over the images? Is it the best head on every image?
(`head_mass` above holds the numbers.)
'''),
    answer(r'''
last = head_mass[:, -1]                              # (B, heads)
best = int(last.mean(0).argmax())
print("best head of the last block on average:", best, "with", round(float(last.mean(0)[best]), 3))
print("it is the best head on", int((last.argmax(1) == best).sum()), "of", len(last), "images")
'''),
    md(r'''
## 2. Why raw attention is not an explanation

Two problems, each checked below.

**It does not depend on the class.** An explanation of "why *circle*?" should differ from
"why *square*?". Attention is computed before the classifier sees anything, so raw attention
and rollout (and attention flow, below) give the same map whatever class you ask about; a
class-specific method (here Chefer's LRP) can differ:
'''),
    code(r'''
for m in ["raw_attention", "rollout", "chefer_lrp"]:
    a = vx.explain(model, x, m, target=0).patch_map
    b = vx.explain(model, x, m, target=1).patch_map
    print(f"{m:14s} largest change of the map between target 'circle' and 'square': {float((a - b).abs().max()):.2e}"
          f"  (class-specific: {vx.get_explainer(m).class_specific})")
'''),
    md(r'''
**One block's attention ignores the others, and the residual stream.** After block 0 a "patch"
token is already a mixture of many patches, and each block adds its attention output to the
token it started from (the residual connection). *Attention rollout* (Abnar & Zuidema, 2020)
models both: average the heads, add the identity for the residual, renormalise the rows, and
multiply the blocks: $J = \hat A_{L-1}\cdots\hat A_0$ with $\hat A_l = \mathrm{rownorm}(\bar A_l + I)$.
The map is the CLS row of $J$ over the patches. Four lines reproduce `vx.explain(..., "rollout")`:
'''),
    code(r'''
joint = torch.eye(A.shape[-1]).expand(len(x), -1, -1)
for l in range(trace.num_layers):
    a_hat = trace.attn_at(l).mean(1) + torch.eye(A.shape[-1])
    joint = (a_hat / a_hat.sum(-1, keepdim=True)) @ joint
by_hand = joint[:, 0, 1:].reshape(len(x), 12, 12)
print("hand-made rollout equals vx.explain(..., 'rollout'):",
      torch.allclose(by_hand, vx.explain(model, x, "rollout").patch_map, atol=1e-6))
'''),
    md(r'''
*Attention flow* (same paper) treats the attention graph as a flow network and computes the
maximum flow from each patch to the CLS token of the last block: slower (a max-flow problem per
patch), also class-agnostic.

Which of the three maps puts more of its mass on the object, and which is more *faithful* (when
we delete the patches in the map's order, most relevant first, how quickly does the probability
of the predicted class fall; a smaller area under that deletion curve is better)? Compare with a
random map. The deletion curve here uses the `patch` preset (patches replaced by 0 in the
normalised space, the dataset's mean colour), 4 patches per step to keep it quick.
'''),
    code(r'''
def scores(method_maps):
    """Object mass (higher: more on the object) and patch-deletion AUC (lower: more faithful)."""
    rows = {}
    for m, pm in method_maps.items():
        d = deletion(model, x, pm, preset="patch", target=pred, step=4)
        rows[m] = (float(relevance_mass(pm, obj).nanmean()), float(d.auc.mean()))
    for m, (mass, auc) in rows.items():
        print(f"{m:16s} object mass {mass:.3f}   deletion AUC {auc:.3f}")
    return rows

random_map = vx.metrics.random_map(list(range(N)), (12, 12), seed=0)
attention_ex = {m: vx.explain(model, x, m) for m in ["raw_attention", "rollout", "attention_flow"]}
# (raw_attention's defaults: the last block, mean of the heads, CLS row)
attention_scores = scores({**{m: ex.patch_map for m, ex in attention_ex.items()}, "random": random_map})
'''),
    code(r'''
viz.show(viz.grid([img0] + overlay_tiles(model, x, list(attention_ex.values())), ["input"] + list(attention_ex), scale=2))
'''),
    md(r'''
**Exercise 2.** Chefer et al. (2021) start rollout at block 1 (`start_layer=1`), arguing the
first block mixes little. Does it change the object mass or the deletion AUC of rollout on these
images?
'''),
    answer(r'''
start1 = scores({"rollout, start_layer=1": vx.explain(model, x, "rollout", start_layer=1).patch_map})
print("rollout, start_layer=0 (above): object mass %.3f, deletion AUC %.3f" % attention_scores["rollout"])
'''),
    md(r'''
## 3. Gradients and relevance

To make a map depend on the class, use the classifier's output for that class:

* **Chefer LRP** (*Transformer Interpretability Beyond Attention Visualization*, CVPR 2021):
  layer-wise relevance propagation gives each block's attention a relevance; it is weighted by the
  attention's gradient, positive part, averaged over heads, and rolled out like rollout.
* **AG-CAM** (Leem & Seo, AAAI 2024): the attention gradients (positive part) weighted by the
  sigmoid of the attention scores, summed over heads and blocks.
* **TAM** (Yuan et al., 2021): the attention as a Markov chain over tokens, weighted by
  integrated gradients of the attention (`steps` points from 0 to the actual attention; the
  reference uses 20, we use 10 here to save time).

How much does the map change with the class asked about? Below, for image 0: the map for the
predicted class and for the second most likely class, and their correlation over patches
(1 = the same map up to scale).
'''),
    code(r'''
probs0 = model(x[:1]).softmax(-1)[0].detach()
top2 = probs0.argsort(descending=True)[:2].tolist()
print("image 0: predicted", names[top2[0]], f"({probs0[top2[0]]:.3f}); second", names[top2[1]], f"({probs0[top2[1]]:.3f})")
GRAD = {"chefer_lrp": {}, "ag_cam": {}, "tam": {"steps": 10}}
tiles, titles = [img0], ["input"]
for m, p in GRAD.items():
    first = vx.explain(model, x[:1], m, target=top2[0], **p)
    second = vx.explain(model, x[:1], m, target=top2[1], **p)
    r = np.corrcoef(first.patch_map.flatten().numpy(), second.patch_map.flatten().numpy())[0, 1]
    print(f"{m:10s} correlation of the two classes' maps: {r:+.2f}")
    tiles += overlay_tiles(model, x[:1], [first, second])
    titles += [f"{m}: {names[top2[0]]}", f"{m}: {names[top2[1]]}"]
viz.show(viz.grid(tiles, titles, scale=2, columns=7))
'''),
    md(r'''
The same two scores as for the attention family, on the same images (the predicted class),
and which family's best method is the most faithful here:
'''),
    code(r'''
gradient_family = {m: vx.explain(model, x, m, **p).patch_map for m, p in GRAD.items()}
gradient_scores = scores(gradient_family)
print()
best_attention = min(("raw_attention", "rollout", "attention_flow"), key=lambda m: attention_scores[m][1])
best_gradient = min(GRAD, key=lambda m: gradient_scores[m][1])
print("lowest deletion AUC, attention family:", best_attention, round(attention_scores[best_attention][1], 3),
      "| gradient family:", best_gradient, round(gradient_scores[best_gradient][1], 3),
      "| random map:", round(attention_scores["random"][1], 3))
'''),
    md(r'''
**Exercise 3.** TAM's cost grows with `steps` (one forward and backward pass per step). How
similar is the TAM map with `steps=3` to the one with `steps=20`, on the first three images
(correlation per image)? Is the cheap version good enough here?
'''),
    answer(r'''
t3 = vx.explain(model, x[:3], "tam", steps=3).patch_map.flatten(1)       # 3 images: steps=20 is the slow one
t20 = vx.explain(model, x[:3], "tam", steps=20).patch_map.flatten(1)
r = [np.corrcoef(a.numpy(), b.numpy())[0, 1] for a, b in zip(t3, t20)]
print("correlation per image:", np.round(r, 3), "| lowest:", round(min(r), 3))
'''),
    md(r'''
## 4. Causes: remove a region and watch the prediction

A map says where the evidence *seems* to be. An **intervention** tests it: replace the patches
and run the model again. `vx.intervene(model, x, patches, mode=...)` does this for many patch
sets in one batched pass. Modes: `noise` (ViT-CX's: Gaussian noise in place of the patches),
`blur`, `mean`, `zero` (the dataset's mean colour) and `drop` (remove the tokens altogether).

Remove the class object's patches (those it covers at least half of), and as a control the same
number of background patches chosen at random, away from the object and the distractors:
'''),
    code(r'''
rng = np.random.default_rng(0)
obj_patches = torch.from_numpy(data.patch_mask("object"))                   # (N, 12, 12) bool
near = torch.from_numpy(data.patch_mask("object", threshold=0) | data.patch_mask("distractors", threshold=0))
control = torch.zeros_like(obj_patches)
for j in range(N):
    free = np.flatnonzero(~near[j].numpy().ravel())
    pick = rng.choice(free, size=int(obj_patches[j].sum()), replace=False)
    control[j].view(-1)[torch.from_numpy(pick)] = True

for mode in ["noise", "blur", "zero", "drop"]:
    a = vx.intervene(model, x, obj_patches, mode=mode, target=pred)
    b = vx.intervene(model, x, control, mode=mode, target=pred)
    print(f"{mode:5s}: mean change of p(predicted class) {float(a.delta.mean()):+.3f} without the object, "
          f"{float(b.delta.mean()):+.3f} without as many background patches; "
          f"prediction changed on {int((a.probs.argmax(-1) != pred).sum())}/{N} vs {int((b.probs.argmax(-1) != pred).sum())}/{N} images")
'''),
    md(r'''
**ViT-CX** (Xie et al., IJCAI 2023) turns this into an explanation. It clusters the last block's
patch features into masks, scores each mask by its *causal score* (the probability of the class
when only the mask is kept, with noise elsewhere, minus the same with the noise added to the whole
image, plus the clean probability), and averages the masks weighted by their scores.
`vx.causal_score` scores any region the same way, so a brushed region and a ViT-CX mask are
measured alike:
'''),
    code(r'''
keep_obj = vx.causal_score(model, x, obj_patches, target=pred, keep=True)
keep_ctl = vx.causal_score(model, x, control, target=pred, keep=True)
print("causal score of keeping only the object:     ", np.round(keep_obj.numpy(), 3))
print("causal score of keeping only the control set:", np.round(keep_ctl.numpy(), 3))
cx = vx.explain(model, x, "vit_cx")
print("ViT-CX masks per image:", [int(m.shape[0]) for m in cx.extras["masks"]])
cx_scores = scores({"vit_cx": cx.patch_map})
viz.show(viz.grid([img0] + overlay_tiles(model, x, [cx]), ["input", "ViT-CX"], scale=2))
'''),
    md(r'''
A **counterfactual** asks for a small region whose removal changes the prediction.
`vx.counterfactual` removes patches in the order of a map, most relevant first, until the top-1
class changes, and by default then puts back every patch it can (`prune=True`, more passes; we
skip it here and count the patches of the greedy pass). A map that ranks the causes first should
need fewer patches; the same search in random order is the control. (`not found`: removing every
patch in that order never changed the prediction.)
'''),
    code(r'''
for order in ["chefer_lrp", "rollout", "random"]:
    sizes = []
    for j in range(4):
        by = vx.metrics.random_map([j], (12, 12), seed=1)[0] if order == "random" else order
        cf = vx.counterfactual(model, x[j:j + 1], order_by=by, mode="zero", batch_size=48, prune=False)
        sizes.append(f"{cf.greedy_size} ({names[cf.new_class]})" if cf.found else "not found")
    print(f"{order:10s} patches to remove, images 0-3:", ", ".join(sizes))
'''),
    md(r'''
In the Explorer, **brush** does the same by hand: the patches you drag over are removed with the
current mode, and the panel shows the probabilities before and after and the region's causal
score. From Python, the same thing:
'''),
    code(r'''
explorer.image_index = 0
explorer.mode = "zero"
explorer.brushed = np.flatnonzero(obj_patches[0].numpy()).tolist()
assert explorer.wait(120)
iv = explorer.intervention
print(f"{len(iv['patches'])} patches brushed: p({iv['target_name']}) {iv['target_before']:.3f} -> {iv['target_after']:.3f}; "
      f"top-1 now {iv['new_top']['name']}")
'''),
    md(r'''
**Exercise 4.** Brush the 10 patches that Chefer LRP ranks *highest* on each image, then the 10
it ranks *lowest*. Which removal lowers the probability of the predicted class more, on average?
'''),
    answer(r'''
lrp = vx.explain(model, x, "chefer_lrp").patch_map.flatten(1)
order = lrp.argsort(dim=1, descending=True)
top10 = torch.zeros_like(lrp, dtype=torch.bool).scatter_(1, order[:, :10], True).view(N, 12, 12)
low10 = torch.zeros_like(lrp, dtype=torch.bool).scatter_(1, order[:, -10:], True).view(N, 12, 12)
d_top = vx.intervene(model, x, top10, mode="zero", target=pred).delta.mean()
d_low = vx.intervene(model, x, low10, mode="zero", target=pred).delta.mean()
print(f"mean change of p(predicted): top-10 removed {float(d_top):+.3f}, bottom-10 removed {float(d_low):+.3f}")
'''),
    md(r'''
## What to take home

* Attention rows are probability distributions over tokens, one per head (section 1 measures
  how much the heads differ); raw attention is the same whatever class you ask about.
* Rollout and flow account for the mixing across blocks, but stay class-agnostic.
* Gradient and relevance methods (Chefer LRP, AG-CAM, TAM) answer "why this class".
* An explanation is a hypothesis about causes; interventions (brushing, `vx.intervene`,
  ViT-CX's causal scores, counterfactuals) test it. The numbers above are from 8 images of one
  small model: rerun with a larger `N`, or with `vit-explore bench`, before generalising.
'''),
]

# --------------------------------------------------------------------------- 03 spurious

SPURIOUS = [
    md(r'''
# Debugging a spurious correlation

The second embedded model, `toy-shapes-spurious`, has the same architecture as `toy-shapes`, but
was trained on images that carry a small coloured **tag** in the top-left corner (8 x 8 pixels,
0.7% of the image) whose colour agreed with the label 95% of the time. The clean model was
trained with tags whose colour was independent of the label. The question of this notebook: what
did each learn, and can the explainers tell, without a test set that breaks the correlation?

Three test sets with the same objects, distractors and backgrounds (the same seed), differing
only in the tag:

* `shapes-spurious`: tag colour agrees with the label 95% of the time, as in training;
* `shapes-shifted`: tag colour independent of the label (agrees 1 time in 5);
* `shapes`: no tag.
'''),
    code(r'''
import numpy as np
import torch
from IPython.display import display

import vit_explore as vx
from vit_explore import viz
from vit_explore.datasets import CUE_COLORS, make_preset
from vit_explore.metrics import relevance_mass, spurious_mass
from vit_explore.zoo import class_names, load_model

models = {"spurious": load_model("toy-shapes-spurious"), "clean": load_model("toy-shapes")}
names = class_names(models["spurious"])
print("classes:", names, "| tag colours (RGB):", CUE_COLORS.tolist())

N_ACC = 200                                 # images per test set for the accuracies
sets = {name: make_preset(name, n=N_ACC) for name in ["shapes-spurious", "shapes-shifted", "shapes"]}
'''),
    code(OVERLAY_HELPER + r'''

def predict(model, images, batch=100):
    x = vx.preprocess(model, list(images))
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)]).numpy()
'''),
    md(r'''
## 0. Without the answer key

Someone debugging their own classifier has no mask of the shortcut. So before this notebook uses
the tag masks, it looks for the shortcut the way they would. `vx.survey` explains every image of
a dataset (here 300 images of the correlated set, with Chefer LRP) into an on-disk store. Then,
for each predicted class, it groups the maps with Spectral Relevance Analysis (SpRAy; Lapuschkin
et al., Nature Communications 2019). `Survey.scan()` then tests every cluster causally:
* it removes the cluster's most distinctive patches (the hot patches of its *contrast map*: the
  cluster's mean map minus its class's mean map) from the cluster's members with `vx.intervene`;
* as a control, it removes as many of the cluster's coldest patches from the same images;
* it lists the clusters by how much more often the first change flips the prediction than the
  control does.

Nothing here reads a mask.
'''),
    code(r'''
survey_data = make_preset("shapes-spurious", n=300)
sv = vx.survey(models["spurious"], survey_data, method="chefer_lrp", progress=False)
rows = sv.scan()
gh, gw = sv.grid
print("class      cluster  size  hot patches (row, col)        flip   control  rest of class")
for r in rows[:6]:
    cells = [divmod(int(i), gw) for i in np.flatnonzero(r["patches"].ravel())]
    where = ", ".join(map(str, cells[:3])) + (f" +{len(cells) - 3}" if len(cells) > 3 else "")
    print(f"{names[r['class']]:>9s}  {r['cluster']:>7d}  {r['n']:>4d}  {where:28s}  {r['flip_rate']:.2f}   "
          f"{r['control_flip_rate']:.2f}     {r['rest_flip_rate']:.2f}")
top = rows[0]
'''),
    md(r'''
The top of the list is a cluster whose distinctive patches lie in the top-left corner (rows and
columns 0 and 1 of the 12 x 12 grid). Removing them flips most of the cluster's predictions,
while removing the same number of cold patches flips almost none. The contrast map shows it,
beside the cluster's plain mean map, where the object dominates. Then look at one member.
'''),
    code(r'''
c, k = top["class"], top["cluster"]
member = int(sv.members(c, k)[0])
up = lambda m: np.kron(m, np.ones((8, 8)))
display(viz.show(viz.grid([survey_data.images[member],
                           viz.overlay(survey_data.images[member], up(sv.mean_map(c, k))),
                           viz.overlay(survey_data.images[member], up(np.clip(sv.contrast_map(c, k), 0, None)))],
                          [f"member #{member}", f"mean map, cluster {k}", "contrast map (> 0)"], scale=2)))
print(f"confirmed: flip rate {top['flip_rate']:.2f} (95% CI {top['flip_rate_ci'][0]:.2f}-{top['flip_rate_ci'][1]:.2f}) "
      f"against control {top['control_flip_rate']:.2f}; Delta p {top['delta_p']:+.3f} vs {top['control_delta_p']:+.3f}")
'''),
    md(r'''
The Atlas shows the same survey interactively:
* each class's images as a scatter, coloured by cluster;
* the cluster cards with their mean maps;
* a click on a point shows that image and its map;
* brushing patches on a mean map runs `Survey.confirm` on those patches and shows the member and
  control flip rates.

It opens here on the contrast maps (the "vs class" box), as the scan above used them; untick the
box for the plain mean maps.
'''),
    code(r'''
vx.Atlas(sv, title="toy-shapes-spurious, Chefer LRP, 300 images", contrast=True)
'''),
    md(r'''
The same scan on the clean model finds no corner: its most telling clusters are about the
object's patches, which flip any shape classifier.
'''),
    code(r'''
clean_rows = vx.survey(models["clean"], survey_data, method="chefer_lrp", progress=False).scan()
corner = lambda r: bool(r["patches"][:2, :2].any())
print("spurious model: top cluster touches the top-left 2 x 2 patches:", corner(rows[0]))
print("clean model:    any of the top 3 clusters touches them:", any(corner(r) for r in clean_rows[:3]))
'''),
    md(r'''
## 1. It scores well

Accuracy of both models on the three test sets, and on the shifted set the share of predictions
that name the *tag's* class rather than the shape's.
'''),
    code(r'''
acc = {}
for mname, model in models.items():
    row = []
    for sname, d in sorted(sets.items(), key=lambda kv: kv[0] == "shapes-shifted"):
        p = predict(model, d.images)
        acc[mname, sname] = (p == d.labels).mean()
        row.append(f"{sname} {acc[mname, sname]:.3f}")
    d = sets["shapes-shifted"]              # the last p is the shifted set's
    disagree = d.cue_labels != d.labels
    follows = (p[disagree] == d.cue_labels[disagree]).mean()
    print(f"{mname:8s} accuracy: " + " | ".join(row) + f" || shifted, tag disagrees: follows the tag {follows:.3f}")
'''),
    md(r'''
## 2. The explainers show where its evidence lies

One image of the correlated set (tag agreeing), explained by both models with several methods.
The tag is in the top-left corner.
'''),
    code(r'''
d = sets["shapes-spurious"]
j = int(np.flatnonzero(d.cue_agrees)[0])
x1 = vx.preprocess(models["spurious"], d.images[j])
print("image", j, "| label:", names[d.labels[j]], "| tag colour of:", names[d.cue_labels[j]])
SHOW = ["rollout", "chefer_lrp", "ag_cam", "tam", "vit_cx"]
PARAMS = {"tam": {"steps": 10}}
for mname, model in models.items():
    exs = [vx.explain(model, x1, m, **PARAMS.get(m, {})) for m in SHOW]
    print(f"{mname:8s} predicts {names[int(exs[0].logits.argmax())]}; share of each map's positive relevance on the tag: "
          + ", ".join(f"{m} {float(spurious_mass(e.patch_map, d.cue_mask[j:j + 1])[0]):.3f}" for m, e in zip(SHOW, exs)))
    display(viz.show(viz.grid([d.images[j]] + overlay_tiles(model, x1, exs), [f"{mname} model"] + SHOW, scale=2)))
'''),
    md(r'''
## 3. Brushing the cue flips it

Take the shifted images where the spurious model follows the tag (it predicts the tag's class,
not the shape's), and brush the tag's patches out with `vx.intervene` (the 2 x 2 patches the
tag touches, filled with the dataset's mean colour). If the tag is the reason for the
prediction, removing it should change the prediction; the cell also counts how often the new
prediction is the shape's class.
'''),
    code(r'''
d = sets["shapes-shifted"]
cue_patches = torch.from_numpy(d.patch_mask("cue", threshold=0)[0])       # the same 2 x 2 corner in every image
print("tag patches (row, col):", [tuple(p) for p in torch.nonzero(cue_patches).tolist()])
model = models["spurious"]
p = predict(model, d.images)
fooled = np.flatnonzero((p == d.cue_labels) & (p != d.labels))[:16]
if len(fooled) == 0:                        # a model that never follows the tag: show the disagreeing images instead
    print("the spurious model follows no disagreeing tag in this set; brushing the disagreeing ones instead")
    fooled = np.flatnonzero(d.cue_labels != d.labels)[:16]
xs = vx.preprocess(model, list(d.images[fooled]))
iv = vx.intervene(model, xs, cue_patches, mode="zero")
after = iv.probs.argmax(-1).numpy()
for k, j in enumerate(fooled[:6]):
    print(f"image {j:3d}: shape {names[d.labels[j]]:8s} tag {names[d.cue_labels[j]]:8s} | predicted {names[p[j]]:8s} "
          f"-> after brushing the tag: {names[after[k]]:8s} (p of the old class {float(iv.base_probs[k, p[j]]):.2f} -> {float(iv.probs[k, p[j]]):.2f})")
print(f"of {len(fooled)} images, brushing the tag changed the prediction on {int((after != p[fooled]).sum())}, "
      f"to the shape's class on {int((after == d.labels[fooled]).sum())}")
'''),
    md(r'''
The same intervention on the whole correlated set, for both models: how often does removing the
tag (4 of 144 patches) change the prediction? And as a control, 4 background patches in the
opposite corner.
'''),
    code(r'''
d = sets["shapes-spurious"]
opposite = torch.zeros(12, 12, dtype=torch.bool)
opposite[-2:, -2:] = True
flips = {}
for mname, model in models.items():
    x_all = vx.preprocess(model, list(d.images))
    with torch.no_grad():
        base = model(x_all).argmax(-1)
    tag = vx.intervene(model, x_all, cue_patches, mode="zero").probs.argmax(-1)
    ctl = vx.intervene(model, x_all, opposite, mode="zero").probs.argmax(-1)
    flips[mname] = (float((tag != base).float().mean()), float((ctl != base).float().mean()))
    print(f"{mname:8s} prediction changed by brushing the tag: {flips[mname][0]:.3f} "
          f"| by brushing the opposite corner: {flips[mname][1]:.3f}")
'''),
    md(r'''
## 4. The spurious-mass metric, for every method

`spurious_mass(map, cue_mask)` is the share of a map's positive relevance that lies on the tag's
pixels (the map is upsampled bilinearly to the image). A map spread evenly would give the tag's
area share, 0.7%. We run every registered method through `vx.run_benchmark` on the correlated
set, for both models, with the object mass (`mass`) beside it, and the three trivial baselines
(random map, centred Gaussian, edge map) computed by the same code.

The sample is small to keep this notebook fast (`N_BENCH` images; RISE, TAM and integrated
gradients with cheaper settings than their defaults). For firmer numbers:
`vit-explore bench --dataset shapes-spurious --model toy-shapes-spurious --limit 500 --out bench-spurious`.
'''),
    code(r'''
N_BENCH = 4
METHODS = vx.list_methods()
CHEAP = {"rise": {"n_masks": 200}, "tam": {"steps": 5}, "integrated_gradients": {"steps": 8},
         "occlusion": {"window": 2, "stride": 2}}
bench = {}
for mname, model in models.items():
    ds = vx.make_dataset("shapes-spurious", model, N_BENCH)
    bench[mname] = vx.run_benchmark(model, ds, METHODS, metrics=["spurious", "mass"], method_params=CHEAP)
area = bench["spurious"].meta["cue_area_share"]
print(f"tag area share: {area:.4f}\n")
print(f"{'method':24s} {'spurious mass':>28s} {'object mass':>28s}")
print(f"{'':24s} {'spurious':>13s} {'clean':>13s}  {'spurious':>13s} {'clean':>13s}")
for m in bench["spurious"].methods:
    s, c = bench["spurious"].table[m], bench["clean"].table[m]
    print(f"{m:24s} {s['spurious']:13.3f} {c['spurious']:13.3f}  {s['mass']:13.3f} {c['mass']:13.3f}")
print("errors:", bench["spurious"].errors or bench["clean"].errors or "none")
'''),
    code(r'''
import plotly.graph_objects as go

ms = bench["spurious"].methods
fig = go.Figure([
    go.Bar(name=f"{k} model", x=ms, y=[bench[k].table[m]["spurious"] for m in ms]) for k in ["spurious", "clean"]
])
fig.add_hline(y=area, line_dash="dot", annotation_text="tag area share (uniform map)")
fig.update_layout(barmode="group", title="Share of each map's positive relevance on the tag (correlated test set)",
                  yaxis_title="spurious mass", template="plotly_white", height=420)
fig
'''),
    md(r'''
## 5. Reading the numbers

The cell below states, from the table above, which methods put more relevance on the tag for the
spurious model than for the clean one, and by how much compared to a uniform map.
'''),
    code(r'''
real = [m for m in ms if not m.startswith("baseline:")]
ratio = {m: bench["spurious"].table[m]["spurious"] / max(bench["clean"].table[m]["spurious"], 1e-12) for m in real}
higher = [m for m in real if ratio[m] > 1]
print(f"{len(higher)} of {len(real)} methods give the tag more mass for the spurious model than for the clean one")
for m in sorted(real, key=lambda m: -bench["spurious"].table[m]["spurious"]):
    s = bench["spurious"].table[m]["spurious"]
    print(f"  {m:22s} spurious model {s:.3f} ({s / area:5.1f}x the area share) | clean model "
          f"{bench['clean'].table[m]['spurious']:.3f} | ratio {ratio[m]:6.1f}")
'''),
    md(r'''
## Summary, from the numbers above

The accuracy on the correlated set is what a test set drawn like the training data reports; the
shifted set and the interventions test what the decision depends on; the spurious-mass column
tells which explainers reveal it from the correlated images alone, without a shifted test set.

'''),
]

# --------------------------------------------------------------------------- 04 your model

SPURIOUS.append(code(r'''
for mname in models:
    print(f"{mname} model: accuracy {acc[mname, 'shapes-spurious']:.3f} on the correlated set, "
          f"{acc[mname, 'shapes-shifted']:.3f} on the shifted set, {acc[mname, 'shapes']:.3f} without tags; "
          f"brushing the 4 tag patches changes {flips[mname][0]:.1%} of its predictions "
          f"(4 patches in the opposite corner: {flips[mname][1]:.1%})")
top = sorted(real, key=lambda m: -ratio[m])[:3]
print("largest spurious/clean ratio of tag mass:", ", ".join(f"{m} ({ratio[m]:.1f}x)" for m in top))
print(f"these are means over N_BENCH = {N_BENCH} images per model; the per-image values vary, so use "
      "vit-explore bench with a larger --limit before ranking methods")
'''))

YOUR_MODEL = [
    md(r'''
# Your model, your images

Everything in the other notebooks works on any timm Vision Transformer: the class token models
(ViT, DeiT), DeiT's distilled models (two read-out tokens), models with register tokens, and
models that average the patch tokens instead of reading a class token. This notebook shows the
workflow on

1. a model by name: pretrained from timm when the machine has network, else the embedded
   `toy-shapes` (this machine is offline, so the notebook runs on the embedded one);
2. your own image, from a file path or a PIL image;
3. the other ViT families, built here with random weights (`pretrained=False`) and small sizes
   just to show that the API handles their token layouts;
4. a local checkpoint: saved and reloaded;
5. a Hugging Face `transformers` model beside a timm one;
6. beyond classifiers: explaining a similarity score of a backbone without a head, and zero-shot
   CLIP over text labels.
'''),
    code(r'''
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import vit_explore as vx
from vit_explore import viz
from vit_explore.datasets import make_preset
from vit_explore.zoo import class_names, load_model, save_model
'''),
    code(OVERLAY_HELPER),
    md(r'''
## 1. A model by name

`load_model` takes an embedded name, any timm model name, or a checkpoint file. With network
access (or a filled timm cache), uncomment the first line to use an ImageNet ViT; its data config
(224 px, ImageNet mean and std) and class names come with it, and nothing else below changes.
'''),
    code(r'''
# model = load_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True)   # needs network once
model = load_model("toy-shapes")                                                        # offline, embedded
names = class_names(model)
print(model.pretrained_cfg["architecture"], "| input", model.pretrained_cfg["input_size"], "|", len(names), "classes")
'''),
    md(r'''
## 2. Your own image

From a file path, open it with PIL (any size, any mode); `vx.explain` preprocesses a PIL image
or an (H, W, 3) uint8 array with the model's data config (resize, centre crop, normalise). Here
we write a test image to a temporary folder first, at another size than the model's (200 x 150),
so the cell runs anywhere; replace `path` with your own file.
'''),
    code(r'''
workdir = Path(tempfile.mkdtemp())
sample = make_preset("shapes", n=1)
path = workdir / "my_image.png"
Image.fromarray(sample.images[0]).resize((200, 150), Image.BILINEAR).save(path)

img = Image.open(path)                      # <- your image here
print("file:", path.name, img.size, img.mode)
x = vx.preprocess(model, img)
print("model input:", tuple(x.shape))
ex = vx.explain(model, img, "chefer_lrp")   # a PIL image (or a uint8 array) works directly
print("predicted:", names[int(ex.target)], f"p={float(ex.probs[0, ex.target[0]]):.3f}")
viz.show(viz.grid([viz.to_uint8_image(model, x[0])] + overlay_tiles(model, x, [ex]), ["input (preprocessed)", "chefer_lrp"], scale=2))
'''),
    md(r'''
Several images at once: pass a list (they are stacked into one batch), or a preprocessed
`(B, 3, H, W)` tensor. Every method is batched.
'''),
    code(r'''
batch = [img, Image.fromarray(make_preset("shapes", n=3).images[2])]
ex = vx.explain(model, batch, "ag_cam")
print("maps:", tuple(ex.patch_map.shape), "| targets:", [names[t] for t in ex.target.tolist()])
'''),
    md(r'''
## 3. Other ViT families

We build small random-weight versions (2 blocks, width 64, 96 px inputs) of four timm families.
With `pretrained=True` and the default sizes, you get the real models; the calls are the same.
The `TokenLayout` of each explanation says how many prefix tokens there are (class, distillation,
registers), the patch grid, and which rows feed the classifier (`cls`, `cls_dist` = mean of the
class and distillation rows, `avg` = mean of the patch rows).
'''),
    code(r'''
SMALL = dict(pretrained=False, depth=2, embed_dim=64, num_heads=2, num_classes=10, img_size=96)
FAMILIES = {
    "deit_tiny_distilled_patch16_224": {},                  # class + distillation token
    "vit_small_patch14_reg4_dinov2": {"img_size": 98},      # class token + 4 registers (patch 14: 7 x 7 grid)
    "vit_medium_patch16_reg4_gap_256": {},                  # 4 registers, average pool, no class token
    "vit_base_patch16_gap_224": {},                         # average pool, no class token
}
METHODS = ["rollout", "chefer_lrp", "attn_grad_cam", "ag_cam", "tam", "grad_cam", "vit_cx"]
family_models = {}
for name, extra in FAMILIES.items():
    torch.manual_seed(0)
    m = timm.create_model(name, **{**SMALL, **extra}).eval()
    # with network: m = load_model(name, pretrained=True)
    family_models[name] = m
    size = m.patch_embed.img_size
    xm = torch.randn(2, 3, *size)
    exs = {meth: vx.explain(m, xm, meth, **({"steps": 5} if meth == "tam" else {})) for meth in METHODS}
    lay = exs["rollout"].layout
    print(f"{name:34s} prefix tokens {lay.num_prefix} (registers {lay.num_reg}), grid {lay.grid}, read-out {lay.readout!r}; "
          f"{len(exs)} methods -> maps {tuple(exs['chefer_lrp'].patch_map.shape)}")
'''),
    md(r'''
Raw attention and interventions follow the same layouts: registers are never read as patches,
and `drop` removes patch tokens whatever the prefix.
'''),
    code(r'''
m = family_models["vit_medium_patch16_reg4_gap_256"]
xm = torch.randn(1, 3, 96, 96)
print("attention maps:", tuple(vx.attention_maps(m, xm).shape), "(B, blocks, heads, gh, gw)")
iv = vx.intervene(m, xm, [0, 1, 6, 7], mode="drop")
print("dropping 4 of 36 patch tokens changes p(top-1) by", round(float(iv.delta[0]), 4))
'''),
    md(r'''
The Explorer takes any of them too:
'''),
    code(r'''
vx.Explorer(family_models["deit_tiny_distilled_patch16_224"], torch.randn(2, 3, 96, 96),
            methods=["raw_attention", "rollout", "chefer_lrp"], title="DeiT distilled (random weights)")
'''),
    md(r'''
## 4. A local checkpoint

`vit_explore.zoo.save_model` writes the weights as safetensors with the timm architecture, its
arguments, the class names and the data config in the file's metadata, so `load_model(path)`
needs nothing else. A plain PyTorch state dict (`.pth`, `.pt`, `.bin`, `.ckpt`; read with
`weights_only=True`) loads too when you name the architecture and its options.
'''),
    code(r'''
name = "vit_base_patch16_gap_224"
m = family_models[name]
kwargs = {k: v for k, v in {**SMALL, **FAMILIES[name]}.items() if k != "pretrained"}
xm = torch.randn(2, 3, 96, 96)

st_path = save_model(m, workdir / "my_vit.safetensors", arch=name, model_kwargs=kwargs)
reloaded = load_model(st_path)
print(st_path.name, "->", type(reloaded).__name__, "| same logits:", torch.equal(m(xm), reloaded(xm)))

pth_path = workdir / "my_vit.pth"
torch.save(m.state_dict(), pth_path)
from_pth = load_model(pth_path, arch=name, **{k: v for k, v in kwargs.items() if k != "num_classes"})
print(pth_path.name, "->", type(from_pth).__name__, "| same logits:", torch.equal(m(xm), from_pth(xm)))
'''),
    md(r'''
A file that does not fit gets a clear error naming the problem and the fix:
'''),
    code(r'''
try:
    load_model(pth_path, arch="vit_tiny_patch16_224")
except vx.VitExploreError as e:
    print(type(e).__name__ + ":", str(e)[:300])
'''),
    md(r'''
## 5. A Hugging Face model

With `pip install "vit-explore[hf]"`, a `transformers` classifier goes to the same calls as it comes
(`ViTForImageClassification`, DeiT, DINOv2, ...): its attention is read whatever
`attn_implementation` it was loaded with, and its class names come from `config.id2label`. The real
use is the commented `from_pretrained` line; offline, we build the same architecture from a small
config with random weights, beside a timm ViT of the same shape.
'''),
    code(r'''
import transformers

# hf_model = transformers.ViTForImageClassification.from_pretrained("google/vit-base-patch16-224")  # needs network once
# processor = transformers.AutoImageProcessor.from_pretrained("google/vit-base-patch16-224")
torch.manual_seed(0)
hf_cfg = transformers.ViTConfig(image_size=96, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=256, num_labels=10)
hf_model = transformers.ViTForImageClassification(hf_cfg).eval()
timm_model = timm.create_model("vit_base_patch16_224", **SMALL).eval()   # the same shape in timm

xm = torch.randn(2, 3, 96, 96)
pair = {"transformers": hf_model, "timm": timm_model}
maps = {(lib, meth): vx.explain(m, xm, meth) for lib, m in pair.items() for meth in ["rollout", "chefer_lrp", "saliency"]}
for (lib, meth), e in maps.items():
    print(f"{lib:12s} {meth:10s} map {tuple(e.patch_map.shape)}, read-out {e.layout.readout!r}")
viz.show(viz.grid(overlay_tiles(hf_model, xm, [maps["transformers", m] for m in ["rollout", "chefer_lrp", "saliency"]])
                  + overlay_tiles(timm_model, xm, [maps["timm", m] for m in ["rollout", "chefer_lrp", "saliency"]]),
                  [f"{lib}: {m}" for lib in pair for m in ["rollout", "chefer_lrp", "saliency"]], scale=2))
'''),
    md(r'''
A PIL image goes through the model's image processor when you pass one (`processor=`), else
through the default processor of its model type sized from `config.image_size`; the explanation
records which:
'''),
    code(r'''
ex = vx.explain(hf_model, img, "rollout")       # img: the PIL image of section 2
print(ex.extras["preprocessing"], "| class names:", vx.class_names(hf_model)[:3], "...")
'''),
    md(r'''
## 6. Beyond classifiers

**A callable target.** `target=` may be a function mapping the model's output to one score per
image (B,). `vx.targets.similarity(e)` is the cosine similarity of the model's output, an image
embedding, to `e`: with a backbone without a head (timm `num_classes=0`, e.g. DINOv2; or
`vx.image_features(hf_model)` for a Hugging Face CLIP / SigLIP / DINOv2) it shows what in one
image makes it similar to another. Methods that need a class read-out say so (`chefer_lrp` starts
from a one-hot vector at the class logits; the interventions report class probabilities).
'''),
    code(r'''
torch.manual_seed(0)
backbone = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, depth=2, embed_dim=64,
                             num_heads=2, num_classes=0, img_size=98).eval()
# backbone = timm.create_model("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=True, num_classes=0)
xb = torch.randn(2, 3, 98, 98)
with torch.no_grad():
    emb = backbone(xb)                                  # (2, 64): image embeddings
similar_to_1 = vx.targets.similarity(emb[1])
sims = {meth: vx.explain(backbone, xb[:1], meth, target=similar_to_1) for meth in ["saliency", "chefer_generic", "attn_lrp"]}
print("cosine similarity of image 0 to image 1:", round(float(sims["saliency"].extras["target_score"][0]), 4))
try:
    vx.explain(backbone, xb[:1], "chefer_lrp", target=similar_to_1)
except vx.VitExploreError as e:
    print(type(e).__name__ + ":", str(e)[:400])
viz.show(viz.grid(overlay_tiles(backbone, xb[:1], list(sims.values())), list(sims), scale=2))
'''),
    md(r'''
Any function of the output works, as long as it gives one floating-point score per image
(a wrong shape or dtype is a clear error):
'''),
    code(r'''
ex = vx.explain(timm_model, xm, "attn_grad_cam", target=lambda logits: logits[:, 3] - logits[:, 5])  # "3 rather than 5"
print(tuple(ex.patch_map.shape), "| scores:", ex.extras["target_score"].tolist())
'''),
    md(r'''
**Zero-shot CLIP and SigLIP.** `vx.zero_shot(model, labels=[...], processor=...)` turns a
`transformers` `CLIPModel` or `SiglipModel` into a classifier whose logits are the model's own
image-text similarities over the labels (with its logit scale, and SigLIP's bias), labels as class
names; `vx.explain`, the interventions and the Explorer take it unchanged. Offline there is no
tokenizer, so this cell gives token ids (`text_inputs=`); `text_embeddings=` takes precomputed
text embeddings. Over a `CLIPModel` every attention method reads the vision tower (CLS read-out;
the head is the projection, L2 normalisation and text matmul), so `chefer_generic` explains the
image side of the similarity as Chefer et al. do for CLIP (ICCV 2021); `chefer_lrp` has no rule
for the normalisation and says so. SigLIP's attention-pool read-out keeps the model-agnostic methods.
'''),
    code(r'''
# clip = transformers.CLIPModel.from_pretrained("openai/clip-vit-base-patch32")
# processor = transformers.CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")
# zs = vx.zero_shot(clip, labels=["a photo of a dog", "a photo of a cat", "a diagram"], processor=processor)
torch.manual_seed(0)
clip_cfg = transformers.CLIPConfig(
    text_config=dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=8, bos_token_id=0, eos_token_id=99, pad_token_id=1),
    vision_config=dict(image_size=96, patch_size=16, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2),
    projection_dim=32)
clip = transformers.CLIPModel(clip_cfg).eval()
labels = ["a photo of a dog", "a photo of a cat", "a diagram"]
token_ids = torch.randint(2, 99, (3, 8))
token_ids[:, -1] = 99                                   # each text ends with the end-of-text token
zs = vx.zero_shot(clip, labels, text_inputs=token_ids)

with torch.no_grad():
    same = torch.allclose(zs(xm), clip(input_ids=token_ids, pixel_values=xm).logits_per_image, atol=1e-5)
print("class names:", vx.class_names(zs), "| logits = CLIP's logits_per_image:", same)
iv = vx.intervene(zs, xm[:1], [0, 1, 6, 7], mode="blur", target="a photo of a cat")
print("blurring 4 cells changes p('a photo of a cat') by", round(float(iv.delta[0]), 4))
zmethods = ["saliency", "integrated_gradients", "chefer_generic", "rollout"]
zmaps = [vx.explain(zs, xm, meth, target="a photo of a cat") for meth in zmethods]
viz.show(viz.grid(overlay_tiles(zs, xm, zmaps), zmethods, scale=2))
'''),
    code(r'''
vx.Explorer(zs, xm, title="zero-shot CLIP (random weights)")
'''),
]

# --------------------------------------------------------------------------- 05 evaluation

EVALUATION = [
    md(r'''
# Evaluating explanations: the seed report's protocol

The seed report compared attention Grad-CAM ("CAM", here `attn_grad_cam`) with Chefer's LRP
("LRP", here `chefer_lrp`) on **Pascal VOC 2012 val**, keeping the images whose main-class
probability is above **0.85**, with five metrics: **Jaccard**, **F1** and **pixel accuracy** of
the thresholded map against the object mask, **deletion AUC** and the **pointing game**. This
notebook is that protocol as a preset. It runs on a VOC folder when you give one (`VOC_ROOT`
below; nothing is downloaded), and here, offline, on the synthetic shapes benchmark with the
embedded model, where the object masks are exact.

Definitions (`vit_explore.evaluation.METRICS`): segmentation scores are computed per image,
at the image's resolution, VOC's 255 border ignored, then averaged over the images;
*pixel accuracy* is the true accuracy (TP + TN) / N, so it is never smaller than the share of
background an empty mask would get; deletion uses the RISE preset (224 pixels per step, replaced
by 0 in the normalised space, probability of the top-1 class, trapezoid AUC on [0, 1], lower is
better); the pointing game counts a hit when the map's maximum is within 15 px of the object,
averaged per class. Trivial baselines (random map, a centred Gaussian, an edge map) go through
the same code: a method that does not beat them has not shown anything.
'''),
    code(r'''
VOC_ROOT = None        # e.g. "~/data": the folder holding VOCdevkit/VOC2012 (torchvision's layout)
VOC_LIMIT = 500        # VOC images to try (the protocol keeps those above the probability threshold)
N_SHAPES = 16          # synthetic images here (small, to keep the notebook fast; vit-explore bench does more)
'''),
    code(r'''
import math

import numpy as np
import plotly.graph_objects as go
import torch

import vit_explore as vx
from vit_explore.datasets.voc import SEED_REPORT
from vit_explore.evaluation import METRICS
from vit_explore.metrics import segmentation_scores
from vit_explore.report import figures
from vit_explore.zoo import load_model

PROTOCOL_METHODS = ["attn_grad_cam", "chefer_lrp"]          # CAM and LRP
PROTOCOL_METRICS = ["jaccard", "f1", "pixacc", "del_rise", "pointing"]
print(SEED_REPORT)
for m in PROTOCOL_METRICS:
    print(f"{m:9s} {'higher' if METRICS[m][1] else 'lower'} is better: {METRICS[m][0]}")
'''),
    md(r'''
The protocol as one function: explain every kept image with both methods and the baselines, and
score every map. `threshold` is the binarisation rule for the segmentation scores (`mean` of
the map, `0.5` of its min-max range, or `otsu`); the seed report did not record its rule, so we
report all three below.
'''),
    code(r'''
def run_protocol(model, dataset, threshold="mean", metrics=PROTOCOL_METRICS):
    return vx.run_benchmark(model, dataset, PROTOCOL_METHODS, metrics=metrics,
                            min_prob=SEED_REPORT.min_prob, threshold=threshold,
                            tolerance=SEED_REPORT.pointing_tolerance, target="pred")
'''),
    md(r'''
## On Pascal VOC (when `VOC_ROOT` is set)

An ImageNet ViT's classes are not VOC's, so the ground truth is every object pixel of the image
(VOC classes 1..20, border ignored), and the explained class is the model's top-1. The model
needs network once for its weights (`pretrained=True`).
'''),
    code(r'''
if VOC_ROOT is not None:
    voc_model = load_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True)
    voc = vx.make_dataset("voc", voc_model, VOC_LIMIT, voc_root=VOC_ROOT)
    voc_result = run_protocol(voc_model, voc)
    print(voc_result.meta)
    print(voc_result.format_table())
else:
    print("VOC_ROOT is None: skipping Pascal VOC. Set it above to the folder that holds VOCdevkit/VOC2012.")
'''),
    md(r'''
## On the synthetic benchmark (runs here)

The same protocol on `N_SHAPES` synthetic test images with the embedded clean model. The
probability threshold applies here too; `meta` says how many images it kept.
'''),
    code(r'''
model = load_model("toy-shapes")
shapes = vx.make_dataset("shapes", model, N_SHAPES)
result = run_protocol(model, shapes)
print(result.meta)
print(result.format_table())
'''),
    md(r'''
Who beats whom? The cell compares each method with the best of the three baselines, metric by
metric (arrows in the table: which direction is better).
'''),
    code(r'''
base = [m for m in result.methods if m.startswith("baseline:")]
for metric in PROTOCOL_METRICS:
    hi = METRICS[metric][1]
    best_b = (max if hi else min)(base, key=lambda b: result.table[b][metric])
    line = []
    for m in PROTOCOL_METHODS:
        v, b = result.table[m][metric], result.table[best_b][metric]
        beats = v > b if hi else v < b
        line.append(f"{m} {v:.3f} {'beats' if beats else 'does not beat'}")
    print(f"{metric:9s} best baseline {best_b} {result.table[best_b][metric]:.3f}: " + "; ".join(line))
'''),
    md(r'''
### The threshold rule matters

Jaccard, F1 and pixel accuracy depend on how the map is binarised. With the maps computed once,
the three rules:
'''),
    code(r'''
items = shapes.load(range(len(shapes)))
xs = torch.stack([it.x for it in items])
with torch.no_grad():
    keep = model(xs).softmax(-1).max(-1).values > SEED_REPORT.min_prob
assert keep.any(), "no image passed the probability threshold; lower SEED_REPORT.min_prob or use more images"
gts = torch.from_numpy(np.stack([it.gt for it in items]))[keep]
rows = {}
for m in PROTOCOL_METHODS:
    maps = vx.explain(model, xs[keep], m).patch_map
    for rule in SEED_REPORT.threshold_rules:
        s = segmentation_scores(maps, gts, rule=rule)       # per image
        rows[m, rule] = tuple(float(s[k].nanmean()) for k in ("jaccard", "f1", "pixel_accuracy"))
print(f"{'method':14s} {'rule':5s} {'jaccard':>8s} {'f1':>8s} {'pixacc':>8s}")
for (m, rule), (j, f, a) in rows.items():
    print(f"{m:14s} {rule:5s} {j:8.3f} {f:8.3f} {a:8.3f}")
empty = ((gts == 0).flatten(1).sum(1) / (gts != 255).flatten(1).sum(1)).mean()
print(f"an empty mask (all background) has pixel accuracy {float(empty):.3f} on these images")
'''),
    md(r'''
The "mean" rows here use the same definitions as the benchmark table above (per-image scores,
averaged over the kept images), so they must agree with it:
'''),
    code(r'''
for m in PROTOCOL_METHODS:
    j, f, a = rows[m, "mean"]
    t = result.table[m]
    assert math.isclose(j, t["jaccard"], rel_tol=1e-6) and math.isclose(f, t["f1"], rel_tol=1e-6) \
        and math.isclose(a, t["pixacc"], rel_tol=1e-6), (m, (j, f, a), t)
print("per-rule scores agree with the benchmark's 'mean' row")
'''),
    md(r'''
## Plots

`vit_explore.report.figures(result)` gives the same static plotly figures as the HTML report of
`vit-explore bench`: the mean deletion curve of each method, and one bar chart per metric
(baselines in grey).
'''),
    code(r'''
figs = figures(result)
print(len(figs), "figures:", [f.layout.title.text.split(":")[0] for f in figs])
figs[0]                                     # deletion curves
'''),
    code(r'''
fig = go.Figure()
for m in result.methods:
    fig.add_trace(go.Bar(name=m, x=PROTOCOL_METRICS, y=[result.table[m][k] for k in PROTOCOL_METRICS],
                         marker_color=None if not m.startswith("baseline:") else
                         {"baseline:random": "#bbbbbb", "baseline:centre": "#888888", "baseline:edge": "#555555"}.get(m)))
fig.update_layout(barmode="group", title=f"Seed-report protocol on {result.meta['dataset']} "
                  f"({result.meta['n_images']} images kept of {result.meta['n_images'] + result.meta['n_skipped']})",
                  template="plotly_white", height=420, yaxis_title="score (del_rise: lower is better)")
fig
'''),
    md(r'''
## Running it at scale

The command line runs the same benchmark with every method, writes CSV, JSON and an HTML report
with these plots, and shards the work over processes with `torchrun`:

```
vit-explore bench --dataset shapes --model toy-shapes --methods attn_grad_cam,chefer_lrp \
    --metrics jaccard,f1,pixacc,del_rise,pointing --min-prob 0.85 --limit 1000 --out bench-shapes
vit-explore bench --dataset voc --voc-root ~/data --model vit_base_patch16_224.augreg2_in21k_ft_in1k \
    --methods attn_grad_cam,chefer_lrp --metrics jaccard,f1,pixacc,del_rise,pointing --min-prob 0.85 --out bench-voc
```
(`vit-explore bench --help` lists the options.)
'''),
]

NOTEBOOKS = {
    "01_tour.ipynb": TOUR,
    "02_workshop.ipynb": WORKSHOP,
    "03_spurious_correlations.ipynb": SPURIOUS,
    "04_your_model.ipynb": YOUR_MODEL,
    "05_evaluation.ipynb": EVALUATION,
}


def build(name: str, cells: list[Cell]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, text, meta) in enumerate(cells):
        text = text.strip("\n")
        cell = new_markdown_cell(text) if kind == "md" else new_code_cell(text)
        cell.metadata.update(meta)
        cell["id"] = f"nb{name[:2]}-{i:03d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = build(name, cells)
        nbformat.write(nb, HERE / name)
        print(f"wrote notebooks/{name}: {len(nb.cells)} cells")


if __name__ == "__main__":
    main()
