"""The paper's three analyses, one command each (`python -m infoprompt.analysis <name>`):

cmi        Figure 1: per-example conditional MI of random, hand-crafted, WARP-learned and
           InfoPrompt-learned prompts (losses.conditional_nce, docs/design.md 2.7).
landscape  Figure 2: task and representation loss over one prompt token on the top-2
           principal components of the input embeddings, with the first training steps.
curves     Figure 3: learning curves of finished runs (their metrics.json histories), mean
           and band over seeds, and the steps each takes to reach a fraction of its final metric.

Each writes a PNG and a JSON into --out. No Ray.
"""
