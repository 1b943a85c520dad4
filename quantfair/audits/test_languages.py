"""Language families, resource level and tokenizer fertility."""

from quantfair.audit import Better, Bound, Correlation, Finding, audit

test_language_families = audit(Finding(
    id="language_families", experiments=("046",),
    claim="First+last protection helps Semitic and CJK languages",
    check=Better("L0+Llast", than="none", per_language=True,
                 languages=("he", "ar", "zh", "ja", "ko")),
))

test_resource_correlation = audit(Finding(
    id="resource_correlation", experiments=("047",),
    claim="Higher-resource languages (Joshi class) lose less under quantization",
    check=Correlation("resource_class", Bound(max=0.0)),
))

test_structure_over_fertility = audit(Finding(
    id="structure_over_fertility", experiments=("059",),
    claim="Structural protection helps even the languages with the most tokens per character",
    check=Better("recommended", than="none", per_language=True,
                 languages=("zh", "ja", "ko", "he", "hi", "th", "ar")),
))
