"""Text side: the Qwen2 tokenizer and the prompt framing (special tokens, system prompts). Imports errors only."""
