"""The feature toolkit: encode a text (``encode_text``), what a latent means (``feature_index``), steering
(``steering``) and whether a detector's latents are causal (``causal_check``)."""
