"""Dictionary learning: the token stream (``corpus``), activation collection (``collect``), BatchTopK SAE
training (``train``) and evaluation (``evaluate``)."""
