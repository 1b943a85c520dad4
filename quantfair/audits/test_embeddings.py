"""Embeddings: token embeddings hurt when protected, positions help."""

from quantfair.audit import Better, Finding, audit

test_token_embedding_harmful = audit(Finding(
    id="token_embedding_harmful", experiments=("025",),
    claim="On GPT-2, protecting the token embedding alone is worse than no protection",
    seed="Token embeddings: HARMFUL when protected (522x vs 214x)",
    check=Better("none", than="embed.tok"),
    families=("gpt2",),
))

test_position_embedding_helpful = audit(Finding(
    id="position_embedding_helpful", experiments=("025",),
    claim="On GPT-2, protecting the position embedding lowers disparity",
    seed="Position embeddings: HELPFUL (133x vs 214x)",
    check=Better("embed.pos", than="none"),
    families=("gpt2",),
))

test_ln_f_helps = audit(Finding(
    id="ln_f_helps", experiments=("050",),
    claim="Adding the final norm to first+last layer protection lowers disparity",
    seed="ln_f helps, embeddings hurt",
    check=Better("L0+Llast+ln_f", than="L0+Llast"),
))

test_embeddings_hurt = audit(Finding(
    id="embeddings_hurt", experiments=("050",),
    claim="On GPT-2, adding the embeddings to first+last layer protection raises disparity",
    seed="ln_f helps, embeddings hurt",
    check=Better("L0+Llast", than="L0+Llast+embed"),
    families=("gpt2",),
))
