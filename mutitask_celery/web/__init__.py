"""The operator's web page (``mutitask web``) and its JSON API and ``/metrics``.

- :mod:`.views`: what the page shows, read from the books (channels, devices, dead
  letters), as plain dicts; task text cut to a size a browser can take.
- :mod:`.metrics`: the same numbers in Prometheus's text format.
- :mod:`.app`: the tornado application: basic auth, a CSRF token on every change,
  a Content-Security-Policy that lets no inline script run, the pages under ``pages/``
  and their scripts under ``static/`` (no CDN: the page works offline).
"""
