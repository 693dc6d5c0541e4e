"""Every streamrag setting, its default and its validation, in one place.

Settings are pydantic models so that a bad value fails when the config is
loaded, with a message that names the field (``cache.window_tokens``), rather
than deep inside a forward pass. YAML files under ``configs/`` are loaded with
:meth:`StreamRAGConfig.load`; command-line flags arrive as dotted overrides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

DTYPE_ALIASES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


class ConfigError(ValueError):
    """A setting is invalid; the message names the field and the fix."""


def default_data_dir() -> Path:
    """Where streamrag keeps converted models, the archive and transcripts.

    ``$STREAMRAG_HOME`` wins, then ``$XDG_DATA_HOME/streamrag``, then
    ``~/.local/share/streamrag``: one directory a user can back up or delete.
    """
    if home := os.environ.get("STREAMRAG_HOME"):
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "streamrag"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    """Which model to run, and where."""

    spec: str | None = Field(
        default=None,
        description="A hub id, a local folder, or a .gguf file. None means the embedded SmolLM2-135M-Instruct.",
    )
    gguf_file: str | None = Field(
        default=None, description="File name of a GGUF inside `spec` when `spec` is a hub id or folder."
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: str = Field(default="auto", description="'auto' (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
    attn_implementation: str | None = Field(
        default=None, description="Passed to transformers (e.g. 'sdpa', 'eager'); None lets transformers choose."
    )
    quantize: Literal["auto", "none", "int8", "int4"] = Field(
        default="auto",
        description=(
            "Weight-only quantisation of the linear layers for CPU decoding (streamrag.quantize). 'auto': on CPU, "
            "int4 when the weights come from a 4-bit GGUF (already on that grid, so nearly lossless) and int8 "
            "from an 8-bit one; otherwise none. 'int4'/'int8' force it on CPU (measure with `streamrag bench "
            "decode`); on CUDA use bf16 and 'none'."
        ),
    )
    trust_remote_code: bool = False

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        canonical = DTYPE_ALIASES.get(value.lower())
        if canonical is None:
            raise ValueError(f"unknown dtype {value!r}; use one of auto, float32/fp32, bfloat16/bf16, float16/fp16")
        return canonical

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.lower()
        if value in {"auto", "cpu", "cuda", "mps"} or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")


class CacheSettings(_Section):
    """The attention-sink window: what stays in the KV cache."""

    sink_tokens: int = Field(default=4, ge=0, description="First tokens that are never evicted (attention sinks).")
    window_tokens: int = Field(default=2044, gt=0, description="Most recent tokens kept after the sinks.")
    evict_chunk: int = Field(
        default=64, gt=0, description="Evict at least this many tokens at once, amortising re-rotation cost."
    )
    prefill_chunk: int = Field(default=512, gt=0, description="Longest piece of a message prefilled in one pass.")
    position_mode: Literal["shift", "self_extend"] = Field(
        default="shift",
        description=(
            "'shift': keys sit at cache-relative positions, the cache stays within the trained length. "
            "'self_extend': distant keys get grouped positions (Self-Extend), so the window may exceed it."
        ),
    )
    group_size: int = Field(
        default=4, ge=1, description="Self-Extend: keys beyond neighbor_window share one position per this many."
    )
    neighbor_window: int = Field(
        default=1024, gt=0, description="Self-Extend: the nearest keys that keep their exact relative positions."
    )

    @field_validator("window_tokens")
    @classmethod
    def _window_holds_sinks(cls, value: int, info: ValidationInfo) -> int:
        sinks = info.data.get("sink_tokens")
        if sinks is not None and value < sinks:
            raise ValueError(
                f"window_tokens ({value}) must be at least sink_tokens ({sinks}): "
                "the rolling window has to be larger than the sinks it sits beside"
            )
        return value

    @field_validator("evict_chunk")
    @classmethod
    def _chunk_fits_window(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("window_tokens")
        if window is not None and value > window:
            raise ValueError(
                f"evict_chunk ({value}) cannot exceed window_tokens ({window}): one eviction would empty the window"
            )
        return value

    @property
    def capacity(self) -> int:
        """Most tokens the cache ever holds: sinks plus window."""
        return self.sink_tokens + self.window_tokens


class GenerationSettings(_Section):
    """Sampling and stopping for replies."""

    max_new_tokens: int = Field(default=512, gt=0)
    temperature: float = Field(default=0.7, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=0, description="0 disables top-k.")
    repetition_penalty: float = Field(
        default=1.1,
        gt=0.0,
        description="1.0 disables it. In JSON and tool calls it looks at the reply's own tokens: they copy values.",
    )
    repetition_window: int = Field(
        default=256, ge=0, description="How many recent cached tokens the repetition penalty looks at."
    )
    seed: int | None = None
    ignore_eos: bool = Field(
        default=False, description="Keep generating past end-of-turn tokens (benchmarks, endless streams)."
    )
    stop: list[str] = Field(default_factory=list, description="Strings that end a reply (not included in it).")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value


class ToolSettings(_Section):
    """Who decides, under tool_choice "auto", whether a turn calls a tool (see streamrag.tool_router)."""

    auto: Literal["infer", "model", "router"] = Field(
        default="infer",
        description=(
            "model: the model decides; router: a request close enough to a tool's description must call it, "
            "and the reply after a tool's result answers in text; infer: router for a model whose chat template "
            "knows no tools (it was not trained to call them), else model."
        ),
    )
    router_threshold: float = Field(
        default=0.28,
        ge=-1.0,
        le=1.0,
        description="Least cosine similarity of a request to a tool's name and description for the router to call it.",
    )
    parallel_calls: Literal["infer", "allow", "one"] = Field(
        default="infer",
        description=(
            "allow: several calls per reply when the caller allows them (parallel_tool_calls); one: one call per "
            "reply; infer: allow for a model whose chat template knows tools, one for others (the embedded 135M "
            "model, forced to call, repeats its call until max_tokens cuts it)."
        ),
    )


class ArchiveSettings(_Section):
    """Where evicted text goes and how it is found again."""

    chroma_url: str | None = Field(
        default=None,
        description=(
            "URL of a Chroma server (`chroma run`), e.g. http://127.0.0.1:8000. None: embedded, under data_dir."
        ),
    )
    tenant: str = "default_tenant"
    database: str = "default_database"
    collection: str = Field(default="streamrag_memories", min_length=3, max_length=63)
    embedding_model: str | None = Field(
        default=None, description="sentence-transformers model: folder or hub id. None: embedded all-MiniLM-L6-v2."
    )
    embedding_device: str = Field(default="cpu", description="Device for the embedder ('cpu', 'cuda').")
    embedding_batch_size: int = Field(default=64, gt=0)
    chunk_chars: int = Field(
        default=800,
        ge=50,
        description="Evicted text is archived in chunks of about this many characters (~200 tokens).",
    )
    chunk_overlap_chars: int = Field(default=160, ge=0, description="Characters shared by consecutive chunks.")
    reranker: str | None = Field(
        default=None, description="Optional sentence-transformers CrossEncoder (folder or hub id) to rerank hits."
    )
    timeout_s: float = Field(
        default=10.0, gt=0.0, description="Longest a call to a Chroma server may take before it counts as an outage."
    )
    lexical_weight: float = Field(
        default=0.35,
        ge=0.0,
        le=1.0,
        description=(
            "Share of a memory's score given to BM25 coverage (the share of the query's content words it holds); "
            "the rest is its cosine similarity. Scores are absolute, so thresholds mean the same for every query."
        ),
    )
    context_chars: int = Field(
        default=280,
        ge=0,
        description=(
            "Messages shorter than this that answer a question are embedded together with it, so a reply like "
            "'I did! Watercolour, on Tuesdays.' is found by a question about the evening class it answers; 0: never."
        ),
    )
    lexical_sessions: int = Field(
        default=32, gt=0, description="BM25 indexes kept in memory (most recently searched sessions)."
    )
    index_batch: int = Field(
        default=64, gt=0, description="Evicted-text log rows the background indexer embeds and stores per batch."
    )
    index_idle_s: float = Field(
        default=5.0,
        ge=0.0,
        description=(
            "While the model is generating, the indexer waits up to this long before embedding, "
            "so archive writes do not slow decoding; recall asks it to catch up at once."
        ),
    )

    @field_validator("chunk_overlap_chars")
    @classmethod
    def _overlap_smaller_than_chunk(cls, value: int, info: ValidationInfo) -> int:
        size = info.data.get("chunk_chars")
        if size is not None and value >= size:
            raise ValueError(f"chunk_overlap_chars ({value}) must be smaller than chunk_chars ({size})")
        return value

    @field_validator("chroma_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"chroma_url must start with http:// or https://, got {value!r}")
        return value


class RecallSettings(_Section):
    """Which archived memories come back into the context, and how many."""

    enabled: bool = True
    top_k: int = Field(
        default=10, ge=0, description="Most memories injected per turn (the token budget usually binds first)."
    )
    budget_fraction: float = Field(
        default=0.15, gt=0.0, le=0.9, description="Share of window_tokens the memory block may use."
    )
    min_score: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description=(
            "Memories scoring below this are not recalled. The score is absolute: cosine similarity mixed "
            "with the share of the question's content words the memory holds (archive.lexical_weight)."
        ),
    )
    context_messages: int = Field(
        default=4,
        ge=0,
        description=(
            "Recent messages that join the question in a second query, so 'and what about her sister?' "
            "finds what the conversation is about; 0 queries with the question alone."
        ),
    )
    context_weight: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="How much a hit of the question-plus-context query counts against a hit of the question alone.",
    )
    speaker_boost: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Added to the score of memories said by someone the question names ('What did Maya ...').",
    )
    neighbours: bool = Field(
        default=True,
        description=(
            "Give a short recalled line the turn before it (and a recalled question the turn after it), "
            "so 'Biscuit!' arrives with 'What did you name him?'."
        ),
    )
    neighbour_chars: int = Field(
        default=280, ge=0, description="Recalled lines shorter than this get their neighbouring turn."
    )
    update_similarity: float = Field(
        default=0.75,
        ge=0.0,
        le=1.0,
        description=(
            "Two statements of one speaker this similar, holding the same words of the question, are taken as "
            "versions of one fact (0.3 less similar suffices when the newer one says something changed: 'now', "
            "'switched', 'no longer'): the newer one ranks first and the older one is marked earlier."
        ),
    )
    time_boost: float = Field(
        default=0.15,
        ge=0.0,
        le=1.0,
        description="Added to the score of memories said in the period a question names ('last week', 'in May').",
    )
    timezone: str | None = Field(
        default=None, description="IANA zone for dates in the memory block and 'yesterday'; None: the machine's."
    )
    index_wait_s: float = Field(
        default=2.0,
        ge=0.0,
        description=(
            "Before recalling, wait up to this long for the session's evicted text to be indexed; "
            "what is still waiting after that is searched lexically."
        ),
    )
    header: str = Field(default="Earlier in this conversation:", min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin'") from exc
        return value


class ServerSettings(_Section):
    """`streamrag api`: the OpenAI-compatible HTTP server (see :mod:`streamrag.api`)."""

    host: str = Field(default="127.0.0.1", description="Address to bind; another address needs an api_key.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP server.")
    api_key: str | None = Field(
        default=None,
        description="Bearer token every request must carry (`Authorization: Bearer ...`); "
        "$STREAMRAG_API_KEY when unset here. None: no auth (only allowed on a loopback address).",
    )
    model_name: str | None = Field(
        default=None, description="The model id clients send and /v1/models lists; None: the model's own name."
    )
    max_active: int = Field(
        default=4, ge=1, description="Requests generating at once; they take turns on the model token by token."
    )
    max_queue: int = Field(
        default=32, ge=0, description="Requests waiting for a turn beyond max_active; more are refused with 429."
    )
    anonymous_sessions: int = Field(
        default=64, ge=1, description="Recent unnamed conversations a message list is matched against."
    )
    max_request_bytes: int = Field(
        default=8_000_000, gt=0, description="Largest request body accepted; larger ones are refused with 413."
    )


class AppSettings(_Section):
    """`streamrag serve`: the Gradio app (see :mod:`streamrag_app`)."""

    auth_file: Path | None = Field(
        default=None,
        description="File of `user:password` lines (blank lines and `#` comments skipped): the app asks to log in "
        "and each user sees only their own sessions. None: no login (only allowed on a loopback address).",
    )
    max_queue: int = Field(
        default=16, ge=1, description="Events waiting in the app's queue; beyond it a request is refused at once."
    )


class StreamRAGConfig(_Section):
    """All settings of one streamrag assistant."""

    data_dir: Path = Field(default_factory=default_data_dir)
    transcript_url: str | None = Field(
        default=None,
        repr=False,  # it may hold a password
        description=(
            "Where the transcript lives: None keeps it in SQLite under data_dir; a "
            "postgresql://user:password@host:port/database URL puts it in PostgreSQL, shared by several "
            "`streamrag api` replicas."
        ),
    )
    system_prompt: str | None = Field(
        default=None, description="System message that opens each conversation; None uses the template's default."
    )
    max_message_chars: int = Field(
        default=1_000_000, gt=0, description="Longest message accepted; longer ones are refused with an error."
    )
    max_message_tokens: int = Field(
        default=32_768,
        gt=0,
        description="Most tokens one message may have; longer ones are refused before anything is stored "
        "(a 2 MiB message of emoji is 1.5M tokens: hours of prefill on a CPU).",
    )
    live_sessions: int = Field(
        default=16,
        ge=1,
        description="Conversations whose KV cache stays in memory; beyond this the least recently used idle one "
        "lets its cache go and rebuilds it from the transcript when used again.",
    )
    model: ModelSettings = Field(default_factory=ModelSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    recall: RecallSettings = Field(default_factory=RecallSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    app: AppSettings = Field(default_factory=AppSettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(value).expanduser()

    @field_validator("transcript_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            # Only the scheme is quoted: the rest of a URL may hold a password.
            got = f"a {value.partition('://')[0]}:// URL" if "://" in value else "no URL scheme"
            raise ValueError(
                f"transcript_url must be a postgresql://user:password@host:port/database URL (got {got}); "
                "leave it unset to keep the transcript in SQLite under data_dir"
            )
        return value

    @property
    def transcript_path(self) -> Path:
        """The SQLite transcript of every session, inside the data directory."""
        return Path(self.data_dir) / "transcripts.sqlite3"

    @property
    def transcript_target(self) -> str | Path:
        """What :func:`streamrag.transcript.open_transcript` opens: ``transcript_url``, else ``transcript_path``."""
        return self.transcript_url or self.transcript_path

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StreamRAGConfig:
        """Load a YAML file (or defaults), then apply dotted overrides like ``{"cache.window_tokens": 512}``."""
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path} must hold a mapping at the top level")
            data = loaded
        for dotted, value in (overrides or {}).items():
            if value is None:
                continue
            set_dotted(data, dotted, value)
        return cls.from_dict(data, source=str(path) if path else "settings")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> StreamRAGConfig:
        """Validate a plain mapping, turning pydantic's report into a :class:`ConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = value


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per bad field, each starting with the dotted field name."""
    lines = [f"invalid {source}:"]
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)
