"""Training with timm's own ``train.py``: the paper's recipes, finding the script, and the torchrun launcher."""
from .launcher import build_train_command, find_recipe, find_train_script, launch_training, list_recipes, load_recipe

__all__ = ['find_train_script', 'list_recipes', 'find_recipe', 'load_recipe', 'build_train_command', 'launch_training']
