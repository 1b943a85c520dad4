"""The precision axis: INT4 is the sweet spot; INT8 needs no protection."""

from quantfair.audit import Better, Bound, Finding, LanguageBound, audit

test_int8_not_needed = audit(Finding(
    id="int8_not_needed", experiments=("044",),
    claim="At INT8 (the baseline's granularity: one scale per tensor, every parameter) no "
          "language's perplexity, English's included, degrades by more than 10%",
    seed="INT4 sweet spot, INT8 not needed",
    slack="the seed gives no number: 'not needed' is read as at most 10% perplexity increase",
    check=LanguageBound("none", "degradation", Bound(max=0.10), scheme="int8",
                        include_reference=True),
))

test_int4_sweet_spot = audit(Finding(
    id="int4_sweet_spot", experiments=("052", "053"),
    claim="INT4 is the sweet spot: with the recommended protection, every language but "
          "English (the reference, not compared) degrades less at INT4 than at INT3",
    seed="Mixed precision: INT4 sweet spot confirmed",
    slack="the seed gives no number; read as: going below INT4 costs every language more",
    check=Better("recommended", than="recommended", quantity="degradation", per_language=True,
                 scheme="int4", than_scheme="int3"),
))
