"""Language families, resource level and tokenizer fertility."""

from quantfair.audit import Better, Bound, Correlation, Finding, GroupOrder, audit

test_language_families = audit(Finding(
    id="language_families", experiments=("046",),
    claim="First+last protection helps Semitic and CJK languages",
    seed="Semitic 22x better, CJK 4x better",
    check=Better("L0+Llast", than="none", per_language=True,
                 languages=("he", "ar", "zh", "ja", "ko")),
))

test_semitic_over_cjk = audit(Finding(
    id="semitic_over_cjk", experiments=("046",),
    claim="First+last protection improves Semitic languages more than CJK languages",
    seed="Semitic 22x better, CJK 4x better",
    slack="the ordering is audited, not the factors (22x and 4x are GPT-2's); Semitic and CJK "
          "are the audited languages among he, ar and among zh, ja, ko",
    check=GroupOrder("L0+Llast", than="none", first=("he", "ar"), second=("zh", "ja", "ko")),
))

test_resource_correlation = audit(Finding(
    id="resource_correlation", experiments=("047",),
    claim="Higher-resource languages (Joshi class) lose less under quantization",
    seed="r=1.000 perfect correlation (exp 047); 'Correlation with resource level: r=-0.85, "
         "p=0.03' (finding 1)",
    slack="bounded at r <= 0 (the direction): the seed's two numbers disagree; decided on r's "
          "95% CI, which the 5 default non-English languages narrow enough only when |r| > 0.88 "
          "(--languages all gives 50+)",
    check=Correlation("resource_class", Bound(max=0.0)),
))

test_structure_over_fertility = audit(Finding(
    id="structure_over_fertility", experiments=("059",),
    claim="Structural protection helps even the languages with the most tokens per character",
    seed="Structure > token count",
    check=Better("recommended", than="none", per_language=True,
                 languages=("zh", "ja", "ko", "he", "hi", "th", "ar")),
))

test_fertility_not_the_explanation = audit(Finding(
    id="fertility_not_the_explanation", experiments=("059",),
    claim="With structural protection, disparity no longer tracks token count: its "
          "correlation with fertility is weak",
    seed="Structure > token count",
    slack="the seed gives no number; 'weak' is read as |Pearson r| <= 0.5, decided on r's 95% "
          "CI: at least 16 languages can show it (--languages all)",
    check=Correlation("fertility", Bound(min=-0.5, max=0.5), strategy="recommended"),
))
