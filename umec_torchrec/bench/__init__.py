"""Benchmarks (``umec bench ...``). Each module in :data:`BENCH_MODULES` has
``add_parser(bench_subparsers)``; to add a benchmark, write one and append its path."""

BENCH_MODULES = [
    "umec_torchrec.bench.train",  # umec bench train
    "umec_torchrec.bench.inference",  # umec bench inference
    "umec_torchrec.bench.overhead",  # umec bench overhead
    "umec_torchrec.bench.scaling",  # umec bench scaling
    "umec_torchrec.bench.quality.command",  # umec bench quality (+ --suite)
    "umec_torchrec.bench.data",  # umec bench data
    "umec_torchrec.bench.latency_quality",  # umec bench latency-quality
    "umec_torchrec.bench.finetune",  # umec bench finetune
]
