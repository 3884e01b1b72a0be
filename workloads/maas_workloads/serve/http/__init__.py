"""The HTTP layer every server here shares: any ASGI application, the same guarantees.

- `settings`: `HttpSettings` and the flag/`MAAS_*` environment machinery (`HTTP_FLAGS`).
- `protocol`: per connection, before the parser — request-header size and deadline, idle
  keep-alive timeout, closing idle connections while draining; `connections`: what they
  share — each connection's phase, the cap on open connections, the drain.
- `front`: per request, before the application — duplicate guarded headers refused, bearer
  token checked before any body is read, the body read whole within its size and deadline
  and decoded, `Connection: close` while draining, one access-log line.
- `server`: per process — `Service` (what an application provides) and `run`, the signal
  handling and drain sequence.
- `transport`: a response's writes gathered into one system call per event-loop turn.
- `tls`: HTTPS — the certificate every handshake uses, reloaded when its files change (a
  rotated Kubernetes Secret); the handshake itself runs under `protocol`'s limits.
- `auth`, `logs`: the bearer-token check and the JSON logs those use.

An application never needs to re-implement any of it: it provides an ASGI callable, a
`begin_drain` that turns its readiness false, its public (probe) paths and its error shape.
"""
