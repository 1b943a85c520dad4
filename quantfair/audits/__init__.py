"""The seed findings as pytest audits: `pytest --pyargs quantfair.audits --quantfair-model X`."""
