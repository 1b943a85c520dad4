"""The precision axis: INT4 is where protection matters; INT8 needs none."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_int8_not_needed = audit(Finding(
    id="int8_not_needed", experiments=("044",),
    claim="At INT8 (per channel) no language's perplexity degrades by more than 10%",
    check=LanguageBound("none", "degradation", Bound(max=0.10), scheme="int8-channel"),
))

test_mixed_precision = audit(Finding(
    id="mixed_precision", experiments=("052", "053"),
    claim="Below INT4 the recommended protection still lowers disparity",
    check=Better("recommended", than="none", scheme="int3"),
))
