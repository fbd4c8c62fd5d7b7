"""The networks: C-ViViT tokenizer, MaskGIT transformer, text encoder, text-video matcher."""
