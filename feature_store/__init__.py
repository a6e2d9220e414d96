"""The online feature store (``reels.feature_store``): Redis keys and packed record layouts, the
namespaced ``OnlineStore``, request-time context encoding, the event and exposure streams and the ingest
worker; imports only ``reels.workflows``."""
