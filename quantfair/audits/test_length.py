"""Text length: protection effects hold for sentences, articles and longer texts."""

from quantfair.audit import Better, Finding, audit

test_length_layer0 = audit(Finding(
    id="length_layer0", experiments=("015", "023"),
    claim="Layer 0 protection lowers disparity on article-length and longer texts",
    check=Better("L0", than="none", lengths=("medium", "long")),
))

test_length_first_last = audit(Finding(
    id="length_first_last", experiments=("045",),
    claim="First+last layer protection lowers disparity at every text length",
    check=Better("L0+Llast", than="none", lengths=("short", "medium", "long")),
))
