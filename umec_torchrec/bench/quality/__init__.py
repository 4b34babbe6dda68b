"""``umec bench quality``: UMEC against the baselines, side by side in one run, and the
quality suite.

Per seed: load the data (seeded split, ``split_seed = seed``: train / validation / test),
train the dense model once and checkpoint it; then, for every method and budget, reload that
checkpoint, compress, fine-tune with the masks fixed
(:class:`~umec_torchrec.umec.masked_optimizer.MaskedOptimizer`) and evaluate on the test
split. Everything runs in one process (world size 1) and in memory.

Every phase uses the same data order (per seed) and the same learning rates: the dense
rates times ``post_lr_factor`` (default 0.1: at the full rate a second pass over a small
sample overfits the tables, for every method alike). All methods meet the same budgets
with the same resource model (dense-path FLOPs by default). References: ``dense`` and
``dense_ft`` (the dense model trained on for as long as the methods). ``--features-only``:
only feature groups are pruned (the paper's Figure 3); ``uniform`` is skipped there.

Modules:

* :mod:`.config` - :class:`QualityConfig`;
* :mod:`.context` - one seed's data, dense checkpoint, fine-tuning, result row;
* :mod:`.methods` - the methods, one function each, registered by name (:data:`METHODS`);
* :mod:`.runner` - :func:`run_quality_bench`;
* :mod:`.statistics` - paired differences, best baseline, field recovery;
* :mod:`.report` - ``quality.{csv,md,png,json}`` and the suite's ``suite.md``;
* :mod:`.suite` - ``--suite`` / ``--quick``;
* :mod:`.command` - the parser.
"""

from umec_torchrec.bench.quality.command import add_parser, config_from_args
from umec_torchrec.bench.quality.config import DEFAULT_DATA, DEFAULT_METHODS, REFERENCES, QualityConfig
from umec_torchrec.bench.quality.methods import METHODS, register_method
from umec_torchrec.bench.quality.report import CSV_FIELDS, format_markdown, format_suite_markdown, write_outputs
from umec_torchrec.bench.quality.runner import run_dense_ft, run_method, run_quality_bench
from umec_torchrec.bench.quality.statistics import paired_differences, summarize, umec_vs_best
from umec_torchrec.bench.quality.suite import run_suite, suite_items

__all__ = ["QualityConfig", "METHODS", "DEFAULT_METHODS", "DEFAULT_DATA", "REFERENCES", "CSV_FIELDS",
           "register_method", "run_quality_bench", "run_method", "run_dense_ft", "summarize", "paired_differences",
           "umec_vs_best", "format_markdown", "format_suite_markdown", "write_outputs", "run_suite", "suite_items",
           "add_parser", "config_from_args"]
