"""Text length: which lengths measure reliably, and protection at every length."""

from quantfair.audit import Better, Finding, ReliableLength, audit

test_length_reliable = audit(Finding(
    id="length_reliable", experiments=("015",),
    claim="Medium and long texts measure more reliably than sentences: the mean disparity's "
          "interval is relatively narrower",
    seed="Medium/long reliable (a methodological note, not a protection claim)",
    slack="the seed gives no number; reliability is read as a narrower relative 95% CI",
    check=ReliableLength("medium"),
))

test_length_layer0 = audit(Finding(
    id="length_layer0", experiments=("023",),
    claim="Layer 0 protection lowers disparity on article-length and longer texts",
    seed="L0 robust",
    check=Better("L0", than="none", lengths=("medium", "long")),
))

test_length_first_last = audit(Finding(
    id="length_first_last", experiments=("045",),
    claim="First+last layer protection lowers disparity at every text length",
    seed="L0+L11 robust across lengths",
    check=Better("L0+Llast", than="none", lengths=("short", "medium", "long")),
))
