"""The console: the owner's web pages (sign-in, the subscription page), server-rendered."""
