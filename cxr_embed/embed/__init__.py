"""Images -> cached embeddings: the backbone registry and graphs, compute placement, extraction, the store.

Import the public names from :mod:`cxr_embed`; these modules load TensorFlow/Keras or h5py.
"""
