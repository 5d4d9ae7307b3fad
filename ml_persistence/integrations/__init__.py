"""Framework integrations: Stable-Baselines3, PyTorch Lightning, Hugging Face Transformers.

Each lives in its own module (``sb3``, ``lightning``, ``transformers``) and is imported only
when asked for, so ``import ml_persistence`` never pulls in a framework.
"""
