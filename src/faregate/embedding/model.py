"""Which embedding model the semantic cache and the trained routers use, without loading it.

Kept apart from embedder.py so that reading a trained router file, which records these, does not
import onnxruntime (~40 MB and a fifth of a second at start-up).
"""

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
DIMENSIONS = 384
# sentence-transformers' max_seq_length for this model, [CLS] and [SEP] included.
MAX_TOKENS = 256


class ModelUnavailable(RuntimeError):
    """The embedding model failed to load and is not tried again before its back-off is over
    (embedder.AsyncEmbedder): the semantic cache misses meanwhile. Already logged."""
