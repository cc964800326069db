"""FastAPI with the collect endpoint at /collect. From the project root, one command:

    .venv/bin/uvicorn examples.fastapi.app:app --port 8000

then open http://127.0.0.1:8000/ (a page whose pushes the forwarder sends), or
``curl -A Mozilla/5.0 --json '{"event": "page.view", "page": {"name": "Home"}}'
localhost:8000/collect/`` (a browser's user agent: curl's is a bot's, whose pushes are
answered ``"bot": true`` and not processed).
Without ``TAGENGINE_EMULATOR`` the sends go to an emulator this process starts (its URL is
logged). With its sends delivered by a worker of their own (benchmarks/web.py runs this):

    TAGENGINE_OUTBOX=/tmp/sends.db TAGENGINE_DELIVER=0 .venv/bin/uvicorn examples.fastapi.app:app
    .venv/bin/tagengine deliver --outbox /tmp/sends.db --rules rules/ --emulator URL
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from engine.web.starlette import TagEngine
from examples.common import PAGE, collect_options, make_engine

# The engine is made at startup (in the worker process) and closed at shutdown.
tagengine = TagEngine(make_engine, **collect_options())
app = FastAPI(lifespan=tagengine.lifespan)
tagengine.mount(app, "/collect")  # POST /collect and everything below it


@app.get("/", response_class=HTMLResponse)
async def home() -> str:
    return PAGE


@app.get("/ruleset")
async def ruleset() -> dict[str, str]:
    """The app's own routes use the same engine."""
    return {"version": tagengine.engine.ruleset.version}
