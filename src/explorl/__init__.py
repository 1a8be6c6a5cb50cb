"""explorl: reinforcement learning for language models that makes exploration work."""

from explorl.config import TrainConfig, load_config

__all__ = ["OfflineTrainer", "TrainConfig", "Trainer", "load_config"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Trainer":  # imported lazily: torch and transformers are slow to import
        from explorl.trainer import Trainer

        return Trainer
    if name == "OfflineTrainer":
        from explorl.offline import OfflineTrainer

        return OfflineTrainer
    raise AttributeError(name)
