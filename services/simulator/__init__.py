"""simulator: the upstream model server — OpenAI- and Anthropic-compatible, deterministic.

The local default upstream of the gateway (so everything runs with no provider account)
and the model server of the tests and benchmarks. Output is deterministic text; usage
blocks are real (counted from the request and the text actually returned), so whatever
meters the calls can be checked against them. The counting rules are in `text.py`.

Endpoints: `POST /v1/chat/completions`, `POST /v1/responses`, `POST /v1/messages`,
`POST /v1/messages/count_tokens`, `POST /v1/images/generations`, `GET /images/{name}.png`,
`GET /v1/models`, `GET /healthz`. Settings: `settings.py`.

Like the vendors' own APIs, a model whose id names its vendor is answered only in that vendor's
protocols (Anthropic: messages and count_tokens; OpenAI: chat completions, responses and
images; the others: chat completions and images), and refused in another as that vendor
refuses a model it does not serve (404). Under `/any` (`http://host:port/any/v1/...`) every model
is answered in every protocol, as an aggregator's endpoint would (common.vendor_speaks).
"""
