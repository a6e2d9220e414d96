"""Model configuration: two-tower retrieval, the multi-task ranker, the FAISS index, evaluation.

Each dataclass checks its values when built, so a bad config fails before any training starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from reels.workflows.errors import ConfigError

RANKER_TASKS = ("view", "liked", "completed", "watch_fraction")
RANKER_ARCHITECTURES = ("mmoe", "ple", "shared_bottom")
# two-tower: how the query tower pools the history list
HISTORY_POOLINGS = ("mean", "masked_mean", "attention")
NEGATIVES = ("in-batch", "mixed")  # two-tower: in-batch negatives, or those plus uniformly sampled videos


def _fail_on(section: str, checks: dict[str, bool], values: object) -> None:
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"invalid {section} config values: {bad} (got {asdict(values)})")


@dataclass(frozen=True)
class TwoTowerConfig:
    """Two-tower retrieval hyperparameters (config section ``two_tower``); raises ``ConfigError`` if invalid."""

    output_dim: int = 64  # embedding size shared by query and item towers (FAISS dimension)
    feature_dim: int = 32  # categorical embedding size inside each tower
    hidden_units: tuple[int, ...] = (128,)
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 0.003
    temperature: float = 0.5
    logq_correction: bool = True  # subtract log(item popularity) from in-batch logits (Yi et al. 2019)
    # How the query tower pools the recent-history list: "mean" of its embeddings (padding included), or
    # "attention": self-attention with learned positions over the non-padding videos, then attention pooling.
    history_pooling: str = "mean"
    attention_heads: int = 2
    attention_layers: int = 1  # self-attention blocks before the pooling
    share_history_embeddings: bool = True  # attention: look history up in the item tower's video_id table
    # "in-batch": the other positives of the batch; "mixed": those plus sampled_negatives videos drawn
    # uniformly from the training videos (Yang et al. 2020), the logQ correction then using the mixture.
    negatives: str = "in-batch"
    sampled_negatives: int = 512
    # Retrieval ranks by two-tower score + trending_prior * log(1 + the video's views in the last
    # trending_prior_days days of the training window), through one more index column (0: off). A two-tower
    # has no notion of time: on logs where fresh or trending videos get pushed, the latest views say more
    # about tomorrow than the whole window (docs/TUNING.md "Retrieval on synthetic").
    trending_prior: float = 0.0
    trending_prior_days: float = 1.0
    # Plus category_prior * log(the smoothed share of the video's category among the query's history),
    # through one more index column per category (0: off): taste x recency, which the towers miss on data
    # whose users draw from a personal mix of categories (docs/TUNING.md "Category affinity").
    category_prior: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        _fail_on("two_tower", {
            "output_dim": self.output_dim > 0, "feature_dim": self.feature_dim > 0,
            "hidden_units": all(u > 0 for u in self.hidden_units), "epochs": self.epochs > 0,
            "batch_size": self.batch_size > 1, "learning_rate": self.learning_rate > 0,
            "temperature": self.temperature > 0,
            "history_pooling": self.history_pooling in HISTORY_POOLINGS,
            "attention_heads": self.attention_heads > 0, "attention_layers": self.attention_layers >= 0,
            "negatives": self.negatives in NEGATIVES, "sampled_negatives": self.sampled_negatives > 0,
            "trending_prior": self.trending_prior >= 0, "trending_prior_days": self.trending_prior_days > 0,
            "category_prior": self.category_prior >= 0,
        }, self)  # fmt: skip


@dataclass(frozen=True)
class RankerConfig:
    """Multi-task ranker hyperparameters and serving score weights (config section ``ranker``); raises
    ``ConfigError`` if invalid."""

    architecture: str = "mmoe"  # one of RANKER_ARCHITECTURES: the trunk `reels train` builds
    num_experts: int = 4  # MMoE: experts shared by every task
    expert_units: tuple[int, ...] = (64,)  # every expert MLP, MMoE and PLE alike
    # PLE (Tang et al., RecSys 2020): per level, num_task_experts per task + num_shared_experts, one gate
    # per task over its own and the shared experts; ple_levels=1 is a single CGC layer.
    num_task_experts: int = 1
    num_shared_experts: int = 2
    ple_levels: int = 2
    tower_units: tuple[int, ...] = (32,)
    shared_bottom_units: tuple[int, ...] = (128, 64)  # the baseline: one shared MLP instead of experts
    feature_dim: int = 16
    epochs: int = 3
    batch_size: int = 2048
    learning_rate: float = 0.001
    position_bias: bool = True  # shallow position x device tower, training only (Zhao et al. 2019)
    loss_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RANKER_TASKS, 1.0))
    # The serving score: a weighted sum of the task heads' predictions, defined here only.
    score_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 0.3, "liked": 0.3, "completed": 0.2, "watch_fraction": 0.2}
    )
    # Chained heads (ESMM, Ma et al. 2018): task -> parent task, e.g. {liked: view}; the task's head then
    # learns P(task | parent) and predicts P(parent) x that, trained on every impression. Binary tasks only;
    # a parent is never itself chained. Empty: every head predicts its task alone.
    conditional_on: dict[str, str] = field(default_factory=dict)
    seed: int = 42

    def __post_init__(self) -> None:
        binary = set(RANKER_TASKS) - {"watch_fraction"}
        _fail_on("ranker", {
            "architecture": self.architecture in RANKER_ARCHITECTURES, "num_experts": self.num_experts > 0,
            "num_task_experts": self.num_task_experts > 0, "num_shared_experts": self.num_shared_experts > 0,
            "ple_levels": self.ple_levels in (1, 2), "expert_units": all(u > 0 for u in self.expert_units),
            "tower_units": all(u > 0 for u in self.tower_units), "epochs": self.epochs > 0,
            "batch_size": self.batch_size > 1, "learning_rate": self.learning_rate > 0,
            "loss_weights": set(self.loss_weights) == set(RANKER_TASKS),
            "score_weights": set(self.score_weights) <= set(RANKER_TASKS) and bool(self.score_weights),
            "conditional_on": set(self.conditional_on) | set(self.conditional_on.values()) <= binary
            and not set(self.conditional_on) & set(self.conditional_on.values()),
        }, self)  # fmt: skip


@dataclass(frozen=True)
class IndexConfig:
    """FAISS index kind and its search parameters (config section ``index``); raises ``ConfigError`` if invalid."""

    kind: str = "auto"  # auto | flat | ivf | hnsw  (auto: exact up to exact_max_items; above, measured)
    exact_max_items: int = 50_000
    ivf_lists: int = 0  # 0: about 4 x sqrt(items)
    ivf_nprobe: int = 128  # with kind: ivf; auto picks from ivf_nprobe_ladder
    ivf_nprobe_ladder: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
    min_recall: float = 0.95  # auto: an IVF setting must reach this recall@recall_k against exact search
    hnsw_m: int = 32
    hnsw_ef_search: int = 512
    recall_k: int = 500  # recall@K against exact search (K = the serving step's candidates)
    recall_queries: int = 500

    def __post_init__(self) -> None:
        _fail_on("index", {
            "kind": self.kind in ("auto", "flat", "ivf", "hnsw"), "ivf_lists": self.ivf_lists >= 0,
            "ivf_nprobe": 0 < self.ivf_nprobe, "hnsw_m": self.hnsw_m > 1, "recall_k": self.recall_k > 0,
            "ivf_nprobe_ladder": bool(self.ivf_nprobe_ladder) and min(self.ivf_nprobe_ladder) > 0,
            "min_recall": 0 < self.min_recall <= 1,
        }, self)  # fmt: skip


@dataclass(frozen=True)
class EvaluationConfig:
    """Offline evaluation cut-offs, the ALS baseline's grid and the validation search's budget (config
    section ``evaluation``); raises ``ConfigError`` if invalid."""

    ks: tuple[int, ...] = (10, 20, 50, 100)
    als_factors: tuple[int, ...] = (32, 64, 128)  # grid searched on the validation window only
    als_regularization: tuple[float, ...] = (0.01, 0.1)
    # The trending baseline: training views of the last N days of the training window, N picked on the
    # validation window from this grid (like ALS's settings).
    trending_days: tuple[float, ...] = (1, 3, 7)
    # The validation search scores each trained two-tower again with the trending prior at each of these
    # weights over each trending_days window (no retraining) and keeps the best; empty: the prior as
    # configured.
    trending_prior_weights: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    # ... and each of those (and the model without one) with the category affinity at each of these
    # weights (two_tower.category_prior); empty: as configured.
    category_prior_weights: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    # Then up to this many rounds refine the best prior found: each weight it sets multiplied and divided
    # by prior_refine_factor, one at a time, kept where validation recall rises (the grid is coarse, and
    # its best can sit on an edge); 0: the grid alone.
    prior_refine_rounds: int = 3
    prior_refine_factor: float = 1.5
    # The diversity trade-off picks the feed score (serving.retrieval_weight) by validation recall@20
    # before sweeping the re-rank on top of it; false: the configured weight.
    pick_feed_score: bool = True
    als_iterations: int = 15
    # `reels evaluate` picks every learned model's settings on the validation window (a small grid per
    # model, models/evaluation/search.py) within this many wall seconds per data set; false or 0: off.
    search: bool = True
    search_budget_s: float = 1200.0
    seed: int = 42

    def __post_init__(self) -> None:
        _fail_on(
            "evaluation",
            {
                "ks": bool(self.ks) and min(self.ks) > 0,
                "als_iterations": self.als_iterations > 0,
                "trending_days": bool(self.trending_days) and min(self.trending_days) > 0,
                "trending_prior_weights": all(w > 0 for w in self.trending_prior_weights),
                "category_prior_weights": all(w > 0 for w in self.category_prior_weights),
                "prior_refine_rounds": self.prior_refine_rounds >= 0,
                "prior_refine_factor": self.prior_refine_factor > 1,
                "search_budget_s": self.search_budget_s >= 0,
            },
            self,
        )

    @property
    def searches(self) -> bool:
        """Whether `reels evaluate` runs the validation search (on, with a budget above 0)."""
        return self.search and self.search_budget_s > 0


@dataclass(frozen=True)
class RetrainConfig:
    """Dask cluster, promotion gate and drift trigger of ``reels retrain`` (config section ``retrain``);
    raises ``ConfigError`` if invalid."""

    scheduler: str = ""  # an existing Dask scheduler address; empty: start a local cluster
    n_workers: int = 0  # local cluster workers (0: one per 2 cores)
    dashboard_address: str = "127.0.0.1:8787"
    gate_metrics: tuple[str, ...] = ("recall@20", "auc_view")
    gate_tolerance: float = 0.0  # candidate >= serving x (1 - tolerance) on every gate metric
    drift_threshold: float = 0.2  # `reels retrain --if-drift`: retrain only when a feature's PSI exceeds it

    def __post_init__(self) -> None:
        _fail_on(
            "retrain",
            {
                "n_workers": self.n_workers >= 0,
                "gate_metrics": len(self.gate_metrics) > 0,
                "gate_tolerance": 0.0 <= self.gate_tolerance < 1.0,
                "drift_threshold": self.drift_threshold > 0,
            },
            self,
        )
