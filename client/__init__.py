"""The client layer (``reels.client``): the `reels` command line (``reels.client.cli``), YAML configuration
loading, the Triton client, rendering, the results recorder and the benchmarks; may import every package."""
