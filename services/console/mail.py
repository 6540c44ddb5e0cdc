"""Sending mail: to the local mail adapter (the simulator's `POST /mailbox`), the only adapter so far."""

import aiohttp


class MailFailed(Exception):
    pass


class Mailer:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/mailbox"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, to: str, subject: str, text: str) -> None:
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.post(self.url, json={"to": to, "subject": subject, "text": text}) as response,
            ):
                response.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MailFailed(str(exc)) from exc
