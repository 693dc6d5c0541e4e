"""The streamrag Gradio app: chat with a memory you can watch.

``make run`` (or ``streamrag serve``) opens it at http://127.0.0.1:7860. It
calls only the public :class:`streamrag.session.Assistant` API; see
:mod:`streamrag_app.ui` for the layout and :mod:`streamrag_app.handlers` for
what each button does.

``streamrag serve --auth USER:PASSWORD`` (or ``--auth-file``) asks for a login,
and each user sees and continues only their own sessions
(:mod:`streamrag_app.auth`); without users the app serves only on a loopback
address.
"""

from __future__ import annotations

from streamrag_app.ui import build_app, launch

__all__ = ["build_app", "launch"]
