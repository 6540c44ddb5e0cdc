"""simulator: the upstream model server — OpenAI- and Anthropic-compatible, deterministic.

The local default upstream of the gateway (so everything runs with no provider account)
and the model server of the tests and benchmarks. Output is deterministic text; usage
blocks are real (counted from the request and the text actually returned), so whatever
meters the calls can be checked against them. The counting rules are in `text.py`.

Endpoints: `POST /v1/chat/completions`, `POST /v1/messages`, `POST /v1/images/generations`,
`GET /images/{name}.png`, `GET /v1/models`, `GET /healthz`. Settings: `settings.py`.
"""
