"""Synergy of the first and last layers, and layer 0's role in it."""

from quantfair.audit import Best, Better, Finding, audit

test_output_layer_synergy = audit(Finding(
    id="output_layer_synergy", experiments=("032",),
    claim="Protecting the first and last layers together beats the first layer alone",
    seed="Layer 0 alone: 3.6x; L0 + L11 together: 0.7x",
    check=Better("L0+Llast", than="L0"),
))

test_last_layer_alone_harmful = audit(Finding(
    id="last_layer_alone_harmful", experiments=("032",),
    claim="On GPT-2, protecting only the last layer is worse than no protection",
    seed="Layer 11 alone: 336.2x (HARMFUL!) vs 206.9x baseline",
    check=Better("none", than="Llast"),
    families=("gpt2",),
))

test_opt_synergy = audit(Finding(
    id="opt_synergy", experiments=("033",),
    claim="The first+last synergy also appears on OPT-125M",
    seed="OPT-125M shows +29.3x synergy bonus",
    check=Better("L0+Llast", than="L0"),
    families=("opt",),
))

test_multilang_synergy = audit(Finding(
    id="multilang_synergy", experiments=("034",),
    claim="First+last layer protection lowers every language's disparity",
    seed="Hebrew 213.8x -> 0.8x, Chinese 33.6x -> 0.3x, Arabic 82.0x -> 0.7x",
    check=Better("L0+Llast", than="none", per_language=True),
    quick=True,
))

test_layer_pairs = audit(Finding(
    id="layer_pairs", experiments=("035",),
    claim="Among layer pairs, first+last gives the lowest disparity on GPT-2",
    seed="OOM (the seed ran out of memory: no result)",
    slack="the seed could not answer; this audit asks the question it meant to",
    check=Best(("L0+L1", "L0+Llast", "L1+Llast", "Lmid+Llast"), expected="L0+Llast"),
    families=("gpt2",),
))

test_triple_layers = audit(Finding(
    id="triple_layers", experiments=("036",),
    claim="Adding a third layer to first+last does not help on GPT-2",
    seed="L0+L11 optimal, adding more doesn't help",
    check=Best(("L0+Llast", "L0+L1+Llast", "L0+Lmid+Llast", "L0+L-2+Llast"),
               expected="L0+Llast"),
    families=("gpt2",),
))

test_synergy_needs_layer0 = audit(Finding(
    id="synergy_needs_layer0", experiments=("042",),
    claim="Layer 0 enables the synergy: first+last beats layer 2+last",
    seed="L0+L11 = 0.0x, L0 enables synergy",
    check=Better("L0+Llast", than="L2+Llast"),
))

test_layer0_necessity = audit(Finding(
    id="layer0_necessity", experiments=("043",),
    claim="On GPT-2 no other layer can replace layer 0 next to the last layer",
    seed="L0+L11: 0.0x; L2+L11: 4749.8x; L4+L11: 150.9x; L8+L11: 195.7x",
    check=Best(("L0+Llast", "L2+Llast", "L4+Llast", "L8+Llast"), expected="L0+Llast"),
    families=("gpt2",), layers=12,
))

test_anti_critical_combos = audit(Finding(
    id="anti_critical_combos", experiments=("030",),
    claim="At equal budget, protecting the even layers beats protecting the odd layers",
    seed="odd=1379.6x, even=0.5x (same overhead, 34.1%)",
    check=Better("even_layers", than="odd_layers"),
))
