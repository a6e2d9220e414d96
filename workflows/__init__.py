"""The data layer (``reels.workflows``): event schema and validation, sources, the day-partitioned offline
store, the NVTabular feature workflow and the feature build; imports no other reels package."""
