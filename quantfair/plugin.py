"""pytest glue for quantfair audits."""
