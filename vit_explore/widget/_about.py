"""One line per method for the Explorer: what the map on screen shows (what is high, what the
method is known for). The sign of a signed map is explained by the widget beside its colour scale."""

from __future__ import annotations

ABOUT: dict[str, str] = {
    "raw_attention": "How much the query token (CLS unless you pick a patch) attends to each patch in one layer and "
                     "head: where the model reads from, not evidence for a class.",
    "rollout": "Attention rollout (Abnar & Zuidema 2020): attention multiplied through all layers with the "
               "residual; high = patches the CLS token draws on overall. Class-agnostic, often diffuse.",
    "attention_flow": "Attention flow (Abnar & Zuidema 2020): max-flow capacity from each patch to CLS through the "
                      "attention graph; class-agnostic and often blocky (a checkerboard is normal on small models).",
    "tam": "Transition attention maps (Yuan et al. 2021): attention as a Markov chain weighted by integrated "
           "gradients; high = evidence for the class. Known for tight object maps.",
    "chefer_lrp": "Chefer et al. 2021: relevance propagated through the layers, gated by attention gradients; "
                  "high = relevance for the class. Known for class-specific, object-centred maps.",
    "chefer_generic": "Chefer et al. 2021 (generic): gradient-weighted attention rolled out over the layers; "
                      "high = relevance for the class.",
    "attn_grad_cam": "Grad-CAM on attention: the last layer's attention weighted by its gradient; high = "
                     "attention that raises the class score.",
    "grad_cam": "Grad-CAM (Selvaraju et al. 2017) on the last block's tokens: high = token features whose gradient "
                "raises the class score. On ViTs it can light up background tokens that carry global context.",
    "ag_cam": "AG-CAM (Leem & Seo 2024): attention-guided Grad-CAM; high = evidence for the class. Like Grad-CAM it "
              "can mark background tokens the model uses as scratch space.",
    "vit_cx": "ViT-CX (Xie et al. 2023): masks from clusters of patch embeddings, weighted by their causal effect "
              "on the class probability; high = regions whose presence keeps the class up.",
    "attn_lrp": "AttnLRP (Achtibat et al. 2024): relevance conserved through attention and MLPs; positive = "
                "evidence for the class, negative = against.",
    "saliency": "Gradient saliency (Simonyan et al. 2014): how sensitive the class score is to each patch's pixels; "
                "noisy, and sensitivity is not evidence.",
    "integrated_gradients": "Integrated gradients (Sundararajan et al. 2017): gradients summed from a baseline "
                            "image; positive pushes the class up, negative down; the total is the score change.",
    "occlusion": "Occlusion (Zeiler & Fergus 2014): how much hiding each patch lowers the class probability; "
                 "positive = the patch supports the class.",
    "rise": "RISE (Petsiuk et al. 2018): random masks weighted by the class probability they leave; high = "
            "regions whose presence raises the class.",
}
