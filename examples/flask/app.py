"""Flask with the collect endpoint at /collect. From the project root, one command:

    .venv/bin/flask --app examples.flask.app run --port 8000

then open http://127.0.0.1:8000/, or
``curl -A Mozilla/5.0 --json '{"event": "page.view", "page": {"name": "Home"}}'
localhost:8000/collect/`` (a browser's user agent: curl's is a bot's, whose pushes are
answered ``"bot": true`` and not processed).
Without ``TAGENGINE_EMULATOR`` the sends go to an emulator this process starts (its URL is
logged). Under gunicorn, see examples/gunicorn/.
"""

from __future__ import annotations

from flask import Flask

from engine.web.flask import init_app
from examples.common import PAGE, collect_options, make_engine

app = Flask(__name__)
# The engine is made in the serving process on its first request, closed at exit.
collect = init_app(app, make_engine, url_prefix="/collect", **collect_options())


@app.get("/")
def home() -> str:
    return PAGE


@app.get("/ruleset")
def ruleset() -> dict[str, str]:
    """The app's own routes use the same engine."""
    return {"version": collect.engine.ruleset.version}
