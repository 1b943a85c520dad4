"""Numbers the seed research series reported, drawn beside this model's for comparison."""

# The seed's Pareto table (GPT-2, 12 layers: Llast is its L11): strategy -> (overhead in % of
# parameters, average low-resource disparity on its per-token definition).
SEED_PARETO_FRONTIER = {
    "none": (0.0, 206.9), "layer0_ln_only": (0.002, 41.6), "layer0_attn": (1.90, 35.0),
    "layer0": (5.70, 3.6), "L0+Llast": (11.39, 15.1), "L0+Llast+ln_f+biases": (11.46, 3.4),
    "L0+Llast+all_ln": (11.42, 2.6), "even_layers": (34.1, 0.5),
}
