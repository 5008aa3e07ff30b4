"""What the own-e-mail experiments share: the shipped SAE, its formatting latents, the activation cache
and the scam reply examples it holds (SMS spam rendered as replies, the model's own e-mails)."""
from dataclasses import dataclass

from detectors.calibration.activation_cache import ActivationCache
from detectors.calibration.data import Example, load_concept
from monitor.artifacts import ARTIFACTS_DIR, default_sae_dir
from monitor.dictionary.corpus import default_data_dir
from monitor.lm.loading import cache_root
from monitor.sae import FrozenSAE
from monitor.toolkit.latent_labels import LABELS_FILE, load_labels


@dataclass
class ScamReplyData:
    sae: FrozenSAE
    cache: ActivationCache
    excluded: set[int]
    """Formatting latents, never admissible."""
    examples: list[Example]


def load_scam_reply_data(compute_dtype: str) -> ScamReplyData:
    sae_dir = default_sae_dir()
    sae = FrozenSAE.load(sae_dir)
    cache = ActivationCache(cache_root() / "detector-activations", "smollm2-135m-instruct", 15, 1280,
                            compute_dtype=compute_dtype)
    excluded = {i for i, v in load_labels(sae_dir / LABELS_FILE, sae.sha256).items() if v.formatting}
    examples = [e for e in load_concept("scam", default_data_dir(), kind="reply", generated_dir=ARTIFACTS_DIR / "data",
                                        max_per_file=1000) if e.key in cache.index]
    return ScamReplyData(sae, cache, excluded, examples)
