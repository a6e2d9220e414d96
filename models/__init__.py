"""The model layer (``reels.models``): two-tower retrieval, the MMoE ranker, the FAISS index, baselines,
metrics, training inputs, training and the versioned model registry; imports ``reels.workflows`` and
``reels.feature_store`` only."""
