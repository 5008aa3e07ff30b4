"""Offline calibration: labelled data and splits, cached activations, span features, latent discovery, the
dense-probe baseline, thresholds with an FPR guarantee, statistics, and the reports."""
