"""Synergy of the first and last layers, and layer 0's role in it."""

from quantfair.audit import Best, Better, Finding, audit

test_output_layer_synergy = audit(Finding(
    id="output_layer_synergy", experiments=("032",),
    claim="Protecting the first and last layers together beats the first layer alone",
    check=Better("L0+Llast", than="L0"),
))

test_last_layer_alone_harmful = audit(Finding(
    id="last_layer_alone_harmful", experiments=("032",),
    claim="On GPT-2, protecting only the last layer is worse than no protection",
    check=Better("none", than="Llast"),
    families=("gpt2",),
))

test_opt_synergy = audit(Finding(
    id="opt_synergy", experiments=("033",),
    claim="The first+last synergy also appears on OPT-125M",
    check=Better("L0+Llast", than="L0"),
    families=("opt",),
))

test_multilang_synergy = audit(Finding(
    id="multilang_synergy", experiments=("034",),
    claim="First+last layer protection lowers every language's disparity",
    check=Better("L0+Llast", than="none", per_language=True),
    quick=True,
))

test_layer_pairs = audit(Finding(
    id="layer_pairs", experiments=("035",),
    claim="Among layer pairs, first+last gives the lowest disparity on GPT-2",
    check=Best(("L0+L1", "L0+Llast", "L1+Llast", "Lmid+Llast"), expected="L0+Llast"),
    families=("gpt2",),
))

test_triple_layers = audit(Finding(
    id="triple_layers", experiments=("036",),
    claim="Adding a third layer to first+last does not help on GPT-2",
    check=Best(("L0+Llast", "L0+L1+Llast", "L0+Lmid+Llast", "L0+L-2+Llast"),
               expected="L0+Llast"),
    families=("gpt2",),
))

test_synergy_needs_layer0 = audit(Finding(
    id="synergy_needs_layer0", experiments=("042",),
    claim="Layer 0 enables the synergy: first+last beats layer 2+last",
    check=Better("L0+Llast", than="L2+Llast"),
))

test_layer0_necessity = audit(Finding(
    id="layer0_necessity", experiments=("043",),
    claim="On GPT-2 no other layer can replace layer 0 next to the last layer",
    check=Best(("L0+Llast", "L2+Llast", "L4+Llast", "L8+Llast"), expected="L0+Llast"),
    families=("gpt2",), layers=12,
))

test_anti_critical_combos = audit(Finding(
    id="anti_critical_combos", experiments=("030",),
    claim="At equal budget, protecting the even layers beats protecting the odd layers",
    check=Better("even_layers", than="odd_layers"),
))
