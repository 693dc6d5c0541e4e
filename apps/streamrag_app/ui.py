"""The layout: chat on the left, the memory panel on the right; archive and settings tabs.

One :class:`~streamrag.session.Resources` (the model, loaded once) serves every
browser tab. Everything that runs the model (reply, regenerate, undo, switching
to a stored session) shares one Gradio concurrency group of size one, so a
second tab waits in Gradio's queue and sees its position instead of racing.
The queue holds at most ``app.max_queue`` waiting events; beyond that a request
is answered at once with Gradio's "queue is full" error.

Safe to share: with users (``launch(auth=[(user, password), ...])``, see
:mod:`streamrag_app.auth`) Gradio asks for a login and each user sees only
their own sessions. The page itself holds no session: the *Past sessions*
list starts empty and is filled per user when the page loads, so ``/config``
names no title or id. Without users :func:`launch` serves only on a loopback
address and never with a share link.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from streamrag.config import StreamRAGConfig  # noqa: E402
from streamrag.session import Resources  # noqa: E402
from streamrag_app.auth import Users, check_exposure, exposed  # noqa: E402
from streamrag_app.handlers import SEARCH_HEADERS, Handlers  # noqa: E402
from streamrag_app.panel import CSS, panel_data, panel_html  # noqa: E402
from streamrag_app.sessions import SessionRegistry, new_state  # noqa: E402

logger = logging.getLogger(__name__)
MODEL_GROUP = "model"  # concurrency id of every event that runs the shared model
CONFIRM_CLEAR = (
    "Forget this whole session for good? Every message and memory of it is erased from the transcript "
    "and the archive. Cancel keeps it."
)

INTRO = (
    "### streamrag: a chat that remembers what left its window\n"
    "The model keeps only the first few tokens (*attention sinks*) and a rolling window in its KV cache. "
    "Text that falls out of the window is archived, and recalled into the context when a later message needs it. "
    "Watch the **memory panel**: the gauge fills, evictions are archived, and old facts come back."
)


def build_app(resources: Resources) -> gr.Blocks:
    """The app around already-loaded resources (tests pass a small in-process config)."""
    registry = SessionRegistry(resources)
    handlers = Handlers(registry)
    defaults = registry.defaults()
    model_limit = {"concurrency_limit": 1, "concurrency_id": MODEL_GROUP}

    with gr.Blocks(title="streamrag", analytics_enabled=False) as demo:
        state = gr.State(new_state())
        gr.Markdown(INTRO)
        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(label="Conversation", height=480, elem_id="chat")
                    textbox = gr.Textbox(placeholder="Say something, then ask about it much later…", show_label=False)
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop")
                        regenerate = gr.Button("Regenerate")
                        undo = gr.Button("Undo")
                with gr.Column(scale=2):
                    with gr.Row():
                        sessions = gr.Dropdown(
                            choices=[],  # filled per user on load: the page config must name no session
                            label="Past sessions",
                            interactive=True,
                            allow_custom_value=True,  # a new session is listed once it holds a message
                            scale=3,
                        )
                        new = gr.Button("New session", scale=1)
                    empty = panel_data(None)
                    memory_html = gr.HTML(panel_html(empty), elem_id="memory-panel")
                    with gr.Accordion("Memory panel data (JSON)", open=False):
                        memory_json = gr.JSON(empty, label="panel")
        with gr.Tab("Archive"):
            gr.Markdown("Search this session's archive (empty query lists every memory). Click a row to pick it.")
            with gr.Row():
                query = gr.Textbox(label="Query", scale=4)
                top_k = gr.Slider(1, 50, value=10, step=1, label="Results", scale=1)
                search = gr.Button("Search", scale=1)
            results = gr.Dataframe(headers=SEARCH_HEADERS, interactive=False, wrap=True, label="Memories")
            with gr.Row():
                chunk_id = gr.Textbox(label="Chunk id", scale=4)
                forget = gr.Button("Forget this memory", scale=1)
                forget_all = gr.Button("Forget the whole session", variant="stop", scale=1)
            archive_status = gr.Markdown()
            with gr.Row(visible=False) as confirm_row:
                confirm_forget = gr.Button(
                    "Yes, forget this session for good", variant="stop", elem_id="confirm-forget"
                )
                cancel_forget = gr.Button("Cancel")
        with gr.Tab("Settings"):
            gr.Markdown("For **new sessions** (press *New session*); a session keeps the settings it began with.")
            window = gr.Slider(64, 8188, value=defaults["cache.window_tokens"], step=4, label="Window tokens")
            sinks = gr.Slider(0, 64, value=defaults["cache.sink_tokens"], step=1, label="Sink tokens")
            recall_k = gr.Slider(0, 16, value=defaults["recall.top_k"], step=1, label="Recall top-k")
            budget = gr.Slider(
                0.05, 0.9, value=defaults["recall.budget_fraction"], step=0.05, label="Recall budget (share of window)"
            )
            temperature = gr.Slider(0.0, 2.0, value=defaults["generation.temperature"], step=0.05, label="Temperature")

        confirmed = gr.Checkbox(visible=False)  # filled in by the browser's confirm dialog
        settings = [window, sinks, recall_k, budget, temperature]
        chat_outputs = [textbox, chatbot, memory_html, memory_json, sessions, state]
        for trigger in (textbox.submit, send.click):
            trigger(
                handlers.respond,
                [textbox, chatbot, state, *settings],
                chat_outputs,
                api_name="chat" if trigger == textbox.submit else False,
                **model_limit,
            )
        stop.click(handlers.stop, [state], None, queue=False, api_name="stop")
        regenerate.click(handlers.regenerate, [chatbot, state], chat_outputs, api_name="regenerate", **model_limit)
        undo.click(handlers.undo, [state], chat_outputs, api_name="undo", **model_limit)
        new.click(handlers.new_session, [state], chat_outputs, api_name="new_session")
        sessions.input(handlers.switch, [sessions, state], chat_outputs, api_name="switch_session", **model_limit)
        # The list is filled per user when the page loads; outside the queue, so a full queue still shows it.
        demo.load(handlers.refresh_sessions, [state], [sessions], api_name=False, queue=False)
        search.click(handlers.search, [query, top_k, state], [results], api_name="search")
        query.submit(handlers.search, [query, top_k, state], [results], api_name=False)
        results.select(handlers.pick, [results], [chunk_id], api_name=False)
        forget.click(
            handlers.forget,
            [chunk_id, query, top_k, state],
            [archive_status, results, chatbot, memory_html, memory_json],
            api_name="forget",
            **model_limit,
        )
        # The chat's trash icon clears the screen in the browser; it forgets the session for real once the user
        # confirms, and puts the conversation back otherwise, so the screen never disagrees with what is stored.
        chatbot.clear(
            handlers.clear_chat,
            [confirmed, state],
            chat_outputs,
            js=f"(confirmed, state) => [window.confirm({CONFIRM_CLEAR!r}), state]",
            api_name=False,
        )
        # Forgetting a whole session asks first: the button only shows the confirmation.
        forget_all.click(handlers.ask_forget_session, [state], [archive_status, confirm_row], api_name=False)
        cancel_forget.click(handlers.cancel_forget_session, None, [archive_status, confirm_row], api_name=False)
        confirm_forget.click(
            handlers.forget_session, [state], [archive_status, results, *chat_outputs], api_name="forget_session"
        ).then(lambda: gr.update(visible=False), None, [confirm_row], api_name=False)
    demo.queue(max_size=resources.config.app.max_queue, default_concurrency_limit=4)
    return demo


def network_warning(host: str, share: bool, users: int) -> str:
    """What an operator should know when the app is reachable beyond this machine."""
    if share:
        where = "through a public share link (its traffic passes through Gradio's share server)"
    else:
        where = f"from the network on {host} (plain HTTP: put a TLS proxy in front, or passwords travel in clear)"
    return f"the app is reachable {where}; only its {users} user(s) can log in, each to their own sessions"


def launch(
    config: StreamRAGConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
    resources: Resources | None = None,
    auth: Users | None = None,
) -> gr.Blocks:
    """Load the model once and serve the app; local only (127.0.0.1, no share link) unless told otherwise.

    ``auth`` (``[(user, password), ...]``) makes Gradio ask for a login and gives each user their own
    sessions. Another address than the loopback one, or ``share``, is refused without it
    (:class:`~streamrag.config.ConfigError`, raised before the model is loaded).
    """
    check_exposure(host, share, auth)
    resources = resources or Resources.load(config)
    demo = build_app(resources)
    logger.info("serving streamrag on http://%s:%d (share=%s, users=%d)", host, port, share, len(auth or []))
    if exposed(host, share):
        logger.warning("%s", network_warning(host, share, len(auth or [])))
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=list(auth) if auth else None,
        auth_message="streamrag: log in to see your own sessions." if auth else None,
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=True,
        quiet=not block,
        css=CSS,
    )
    return demo
