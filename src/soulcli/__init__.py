"""soulcli: LLM unlearning with second-order optimizers (SOUL, Jia et al., EMNLP 2024)."""

__version__ = "0.1.0"
