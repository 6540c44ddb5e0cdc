"""`POST /v1/images/generations` (OpenAI images) and `GET /images/{name}.png`: a tiny valid PNG."""

import base64
import struct
import time
import zlib
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from services.simulator import openai_api, text
from services.simulator.common import ProtocolApi, decode, generation_time


def _png() -> bytes:
    """A 1×1 RGBA PNG, built by hand (signature, IHDR, IDAT, IEND, each chunk with its CRC)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x4f\x8a\xd6\xff")  # filter type 0, one pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = _png()
PNG_B64 = base64.b64encode(PNG).decode()


class ImageRequest(msgspec.Struct):
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    model: str | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=10)] | None = None
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None


class TokenDetails(msgspec.Struct):
    text_tokens: int
    image_tokens: int = 0


class ImageUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: TokenDetails


class ImagesResponse(msgspec.Struct):
    created: int
    data: list[dict[str, str]]
    usage: ImageUsage


_decoder = msgspec.json.Decoder(ImageRequest)
_encoder = msgspec.json.Encoder()


class ImagesApi(ProtocolApi):
    refusals = openai_api.REFUSALS

    def routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_post(prefix + "/v1/images/generations", self.generate)
        app.router.add_get(prefix + "/images/{name}.png", self.image)

    async def generate(self, request: web.Request) -> web.Response:
        """n images of the same PNG; input tokens are the prompt's words (no per-message overhead)."""
        call = await self.opening(request, "images", lambda body: decode(_decoder, body), lambda parsed: parsed.model)
        if isinstance(call, web.Response):
            return call
        await generation_time(self.settings, 0)  # the first-token delay stands for the generation time
        words = text.words(call.prompt)
        seed = zlib.crc32(call.prompt.encode(errors="surrogatepass"))
        data: list[dict[str, str]]
        if call.response_format == "url":
            base = f"{request.scheme}://{request.host}/images/img-{seed:08x}"
            data = [{"url": f"{base}-{i}.png"} for i in range(call.n or 1)]
        else:
            data = [{"b64_json": PNG_B64} for _ in range(call.n or 1)]
        body = ImagesResponse(int(time.time()), data, ImageUsage(words, 0, words, TokenDetails(words)))
        return web.Response(body=_encoder.encode(body), content_type="application/json")

    async def image(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png", headers={"Cache-Control": "max-age=86400"})
