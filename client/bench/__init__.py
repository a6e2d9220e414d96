"""Benchmarks behind `reels bench <name>`. Each module ``reels.client.bench.<name>`` has
``measure(args, config) -> dict`` (the run, from the command's arguments), ``table(report) -> str`` (its
markdown section) and, where its BENCHMARKS.json keys are not just ``{<name>: report}``,
``sections(report)``; ``reels.client.record.benchmark`` writes them with `--record`."""
