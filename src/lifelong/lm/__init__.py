"""Language models: Hugging Face causal LMs in the learner's loop, their tokenizers, token caches, export.

Everything here imports transformers/tokenizers lazily (inside functions), so `import lifelong` and the CLI
stay fast for users who never touch a language model.
"""
